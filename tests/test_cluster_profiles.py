"""Site config -> profile: defaults, the user's file, flags, and clear errors for bad values."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from cluster.profiles import PROFILES, executor, load_site
from lucie_nemo.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[1] / "cluster" / "examples" / "clusters.toml"

JEANZAY = """
[jz]
profile = "jeanzay"
account = "abc@h100"
venv = "/lustre/work/venv"
output_root = "/lustre/runs"
"""

GENERIC = """
[plain]
profile = "generic"
venv = "/shared/venv"
output_root = "/shared/runs"
"""


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """Tests never read the developer's ~/.config/lucie-nemo/clusters.toml."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clusters.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("cluster", sorted(tomllib.loads(EXAMPLE.read_text())))
def test_every_example_table_loads(cluster):
    site, profile = load_site(cluster, EXAMPLE)
    assert site.name == cluster and profile.name == site.profile


def test_profile_defaults_then_file_then_flags(tmp_path):
    site, profile = load_site("jz", config(tmp_path, JEANZAY + 'walltime = "10:00:00"\n'), qos="qos_gpu_h100-dev")
    assert profile.name == "jeanzay"
    assert (site.gpus_per_node, site.constraint, site.cpus_per_task) == (4, "h100", 96)
    assert site.sbatch == {"hint": "nomultithread"}
    assert site.walltime_minutes == 600  # from the file
    assert site.qos == "qos_gpu_h100-dev"  # from a flag
    assert site.lucie == "/lustre/work/venv/bin/lucie"
    assert site.jobs_folder == "/lustre/runs/jobs"


def test_pyxis_defaults():
    site, _ = load_site("pyxis", account="acct", output_root="/lustre/runs")
    assert site.gpus_per_node == 8
    assert site.container_image.startswith("nvcr.io/nvidia/nemo:")
    assert site.lucie == "lucie"  # on the image's PATH unless a venv is given


def test_generic_needs_only_a_venv_and_an_output_root(tmp_path):
    site, profile = load_site("plain", config(tmp_path, GENERIC))
    assert profile.slurm and (site.gpus_per_node, site.walltime, site.account, site.modules) == (8, "04:00:00", None, ())
    slurm = executor(site, 2)
    assert (slurm.account, slurm.constraint, slurm.gpus_per_node, slurm.ntasks_per_node) == (None, None, 8, 8)
    cpu, _ = load_site("plain", config(tmp_path, GENERIC + "gpus_per_node = 0\nconstraint = ''\naccount = ''\n"))
    cpu_nodes = executor(cpu, 1)
    assert (cpu_nodes.account, cpu_nodes.constraint, cpu_nodes.gpus_per_node, cpu_nodes.ntasks_per_node) == \
        (None, None, None, 1)


def test_local_needs_no_config():
    site, profile = load_site("local")
    assert not profile.slurm and site.gpus_per_node == 0
    local = executor(site, 1)
    assert local.nproc_per_node() == 1
    assert local.env_vars["PATH"] == f"{sys.prefix}/bin"  # torchrun and lucie of this environment


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("", {}, "unknown cluster 'jz'"),
        (JEANZAY.replace('account = "abc@h100"\n', ""), {}, "set account"),
        (JEANZAY.replace('venv = "/lustre/work/venv"\n', ""), {}, "set venv"),
        (GENERIC.replace("[plain]", "[jz]").replace('venv = "/shared/venv"\n', ""), {}, "set venv"),
        (JEANZAY, {"output_root": "runs"}, "output_root must be an absolute path"),
        (JEANZAY + 'container_image = "x"\n', {}, "'container_image' is not a setting of profile 'jeanzay'"),
        (JEANZAY + "gpus_per_node = '4'\n", {}, "gpus_per_node = '4' should be an integer"),
        (JEANZAY, {"walltime": "20h"}, "walltime '20h': write it HH:MM:SS"),
        (JEANZAY + "sigterm_seconds = 1200\n", {}, "sigterm_seconds \\(1200\\) must be shorter"),
        ("jz = 3\n", {}, "must be a table"),
        ("[jz\n", {}, "not valid TOML"),
    ],
)
def test_bad_site_values_are_user_errors(tmp_path, text, flags, message):
    with pytest.raises(UserError, match=message):
        load_site("jz", config(tmp_path, text), **flags)


def test_missing_explicit_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_site("jeanzay", tmp_path / "nope.toml")


def test_default_config_location(tmp_path):
    path = tmp_path / "xdg" / "lucie-nemo" / "clusters.toml"
    path.parent.mkdir(parents=True)
    path.write_text(JEANZAY)
    site, _ = load_site("jz")
    assert site.account == "abc@h100"


def test_profiles_are_documented():
    assert set(PROFILES) == {"jeanzay", "pyxis", "generic", "local"}
    assert all(profile.description for profile in PROFILES.values())
