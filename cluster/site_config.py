"""A site's values (account, partition, image, roots, walltime...) from a small TOML file and flags.

The file holds one table per cluster; its name is what ``--cluster`` selects and ``profile``
says which kind of site it is (default: the table's name)::

    [jeanzay]
    account = "abc@h100"
    venv = "/lustre/fswork/projects/abc/lucie-venv"
    output_root = "/lustre/fsn1/projects/abc/lucie/runs"

Values are merged in this order: the profile's defaults, the file's table, then flags.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lucie_nemo.errors import UserError

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")


@dataclass(frozen=True)
class Site:
    """One cluster: where runs write, what an allocation looks like, how nodes get the software."""

    name: str
    profile: str
    output_root: str | None = None  # <output_root>/<phase>/checkpoints, tensorboard
    data_root: str | None = None  # tokenised datasets; None trains on mock data
    job_root: str | None = None  # nemo-run experiments: sbatch scripts and logs (default <output_root>/jobs)
    gpus_per_node: int = 0  # 0: CPU (local profile only)
    venv: str | None = None  # virtualenv with lucie-nemo installed: runs <venv>/bin/lucie
    env: dict[str, str] = field(default_factory=dict)  # exported before training
    # Slurm
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None  # one task per node (torchrun): all the node's cores
    mem: str | None = None
    walltime: str = "01:00:00"  # [D-]HH:MM:SS, the job's time limit
    stop_margin_minutes: int = 20  # training saves and stops this long before the limit
    sigterm_seconds: int = 300  # Slurm sends SIGTERM this long before the limit (backstop)
    max_retries: int = 3  # requeues in a row without a new checkpoint before giving up
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH flags, e.g. {hint = "nomultithread"}
    modules: tuple[str, ...] = ()  # `module load` arguments (after `module purge`)
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()

    @property
    def walltime_minutes(self) -> int:
        return parse_walltime(self.walltime)

    @property
    def lucie(self) -> str:
        """The `lucie` executable the nodes run."""
        return f"{self.venv}/bin/lucie" if self.venv else "lucie"

    @property
    def jobs_folder(self) -> str:
        return self.job_root or f"{self.output_root}/jobs"


SETTINGS = frozenset(f.name for f in fields(Site)) - {"name", "profile"}
_TYPES: dict[str, tuple[type, ...]] = {
    "gpus_per_node": (int,), "cpus_per_task": (int,), "stop_margin_minutes": (int,),
    "sigterm_seconds": (int,), "max_retries": (int,), "env": (dict,), "sbatch": (dict,),
    "modules": (list, tuple), "container_mounts": (list, tuple),
}


_TYPE_NAMES = {int: "an integer", str: "a string", dict: "a table", list: "a list"}


def parse_walltime(text: str) -> int:
    """Minutes in a Slurm time limit written ``HH:MM:SS`` or ``D-HH:MM:SS`` (seconds are dropped)."""
    match = _WALLTIME.match(str(text).strip())
    if not match:
        raise UserError(f"walltime {text!r}: write it HH:MM:SS or D-HH:MM:SS (e.g. 20:00:00 or 1-12:00:00)")
    days, hours, minutes, _ = (int(part or 0) for part in match.groups())
    return days * 24 * 60 + hours * 60 + minutes


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/lucie-nemo/clusters.toml`` (``~/.config/...`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "lucie-nemo" / "clusters.toml"


def read_config(path: Path | None) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """The file's tables; an explicit ``path`` must exist, the default one may be absent."""
    if path is None:
        path = default_config_path()
        if not path.is_file():
            return {}, None
    elif not path.is_file():
        raise UserError(f"site config {path} does not exist: check --site-config")
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"site config {path} is not valid TOML: {error}") from None
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise UserError(f"site config {path}: {name!r} must be a table ([{name}]) of cluster settings")
    return tables, path


def merge_site(name: str, profile: str, defaults: dict[str, Any], values: dict[str, Any], allowed: frozenset[str],
               source: str) -> Site:
    """A Site from a profile's defaults and the user's values, each key and type checked."""
    for key, value in values.items():
        if key not in allowed:
            raise UserError(
                f"{source}: {key!r} is not a setting of profile {profile!r}; valid: {', '.join(sorted(allowed))}"
            )
        expected = _TYPES.get(key, (str,))
        if isinstance(value, bool) or not isinstance(value, expected):
            raise UserError(f"{source}: {key} = {value!r} should be {_TYPE_NAMES[expected[0]]}")
    merged = defaults | values
    for key in ("modules", "container_mounts"):
        merged[key] = tuple(merged.get(key, ()))
    site = Site(name=name, profile=profile, **merged)
    parse_walltime(site.walltime)
    return site
