"""Dry runs without a site config: the profile's example values (cluster/examples/clusters.toml), marked.

A dry run of a Slurm cluster that has no table in the site config renders its scripts with the example
values of the same profile, so that a newcomer sees real scripts. Every such value is listed as a
placeholder in a header of each script and in a notice; the scripts go under the current folder
(``lucie-dry-run/``), and nothing is created at the placeholder paths. A submission never uses them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cluster.site_config import read_config

EXAMPLES = Path(__file__).with_name("examples") / "clusters.toml"
DRY_RUN_FOLDER = "lucie-dry-run"
# Left out of the examples: data_root (a blend is validated against its files, which are not here) and
# job_root (the scripts are written under the current folder instead).
_NOT_USED = frozenset({"profile", "data_root", "job_root"})
MARK = "# lucie: PLACEHOLDER"


def example_values(profile: str) -> dict[str, Any]:
    """The settings of the first example table of ``profile`` (the kind of site), without _NOT_USED."""
    tables = tomllib.loads(EXAMPLES.read_text())
    for name, table in tables.items():
        if table.get("profile", name) == profile:
            return {key: value for key, value in table.items() if key not in _NOT_USED}
    return {}


def placeholder_values(cluster: str, site_config: Path | None, given: dict[str, Any]) -> dict[str, Any]:
    """The example values a dry run of ``cluster`` uses: none if the site config has its table or it is no
    Slurm profile; the flags the user ``given`` (not None) are the user's, never placeholders."""
    from cluster.profiles import PROFILES

    tables, _ = read_config(site_config)
    profile = PROFILES.get(cluster)
    if cluster in tables or profile is None or not profile.slurm:
        return {}
    return {key: value for key, value in example_values(profile.name).items() if given.get(key) is None}


def notice(placeholders: dict[str, Any]) -> list[str]:
    """Lines saying which values are placeholders and how to give real ones."""
    values = ", ".join(f"{key} = {value!r}" for key, value in placeholders.items())
    return [
        f"{MARK} values (no site config for this cluster), from {EXAMPLES.name} of lucie-nemo: {values}",
        "# lucie: these scripts are examples, not submittable: put your values in ~/.config/lucie-nemo/clusters.toml "
        "(start from cluster/examples/clusters.toml) or pass --site-config FILE; nothing was created at these paths",
    ]


def mark_scripts(paths: list[Path], placeholders: dict[str, Any]) -> None:
    """Write the notice at the top of each rendered script, after its shebang."""
    for path in paths:
        first, _, rest = path.read_text().partition("\n")
        path.write_text("\n".join([first, *notice(placeholders), rest]))
