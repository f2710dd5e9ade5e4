"""`lucie data build --cluster NAME --dry-run`: the Slurm scripts of a build of the miniature public dataset
(fake Hub): jobs sized by bytes covering every prefix once, the final blend job afterok on all, the site's
values; bad input."""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_hub import DatasetHub
from lucie_nemo.cli.data import data_app
from lucie_nemo.data.sources import DATASET, list_dataset_files, phase_sources

GROUPED = "lucie_tokens_65k_grouped"
SITE = """
[jz]
profile = "jeanzay"
account = "abc@cpu"
qos = "qos_cpu-t3"
partition = "cpu_p1"
cpus_per_task = 40
modules = ["python/3.12"]
venv = "/lustre/work/lucie-venv"
output_root = "/lustre/scratch/lucie/runs"
job_root = "{jobs}"

[eos]
profile = "pyxis"
account = "acct"
output_root = "/lustre/runs"
job_root = "{jobs}"
"""


@pytest.fixture()
def hub(dataset_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return dataset_hub


@pytest.fixture()
def site_config(tmp_path) -> Path:
    path = tmp_path / "clusters.toml"
    path.write_text(SITE.format(jobs=tmp_path / "jobs"))
    return path


def dry_run(hub: DatasetHub, phase: str, root: Path, *args: str):
    return CliRunner().invoke(data_app, ["build", phase, "--data-root", str(root), "--endpoint", hub.url,
                                         "--dry-run", *args])


def scripts(result) -> dict[str, tuple[str, list[str]]]:
    """Job name -> (its sbatch script, the `lucie` command it runs), from the paths the dry run printed."""
    assert result.exit_code == 0, result.output
    jobs = {}
    for line in result.stdout.splitlines():
        if line.endswith("_sbatch.sh"):
            name = Path(line).name.removesuffix("_sbatch.sh")
            script = Path(line).parent / name / "scripts" / f"{name}.sh"  # what srun runs (in a container too)
            jobs[name] = (Path(line).read_text(), shlex.split(script.read_text().splitlines()[-1]))
    return jobs


def only(command: list[str]) -> list[str]:
    return [word.removeprefix("--only=") for word in command if word.startswith("--only=")]


def step(command: list[str]) -> str:
    return command[command.index("--step") + 1]


def test_jobs_sized_by_bytes_cover_every_prefix_once_then_the_blend_job_afterok(hub, site_config, tmp_path):
    root = tmp_path / "data"
    # 8,000 bytes per job; the miniature's datasets weigh 3,854 3,825 | 855 1,858 1,862 | 4,403 1,830 | 4,403 ...
    result = dry_run(hub, "pretrain", root, "--cluster", "jz", "--site-config", str(site_config),
                     "--task-gb", "0.000008")
    jobs = scripts(result)
    blend_job = jobs.pop("data-blend")
    assert list(jobs) == [f"data-{number:03d}" for number in range(1, 10)]
    groups = [[name.removeprefix(f"{GROUPED}/").removesuffix("_text_document") for name in only(command)]
              for _, command in jobs.values()]
    assert groups == [
        ["FineWebEdu--cc-main-2019", "RedPajama--fr--2019"], ["RedPajama--fr--2020", "TheStack--python", "Wikipedia--fr"],
        ["Claire--en--MediaSum", "ValidatedYouTube--fr"], ["Claire--en--DialogStudio"], ["Claire--en--BNC"],
        ["Claire--en--OANC"], ["Claire--en--DailyDialog"], ["Claire--en--ICSI"], ["Claire--en--AMI"]]

    report = phase_sources("pretrain", list_dataset_files(endpoint=hub.url))
    with_files = [source.prefix for source in report.sources if source.files]
    covered = Counter(prefix for _, command in jobs.values() for prefix in only(command))
    assert sorted(covered) == sorted(with_files) and set(covered.values()) == {1}  # every prefix exactly once
    assert f"{GROUPED}/Persee_text_document" not in covered  # not public: no job

    for sbatch, command in jobs.values():
        assert command[:3] == ["/lustre/work/lucie-venv/bin/lucie", "data", "build"] and command[3] == "pretrain"
        assert command[command.index("--data-root") + 1] == str(root) and step(command) == "datasets"
        assert "#SBATCH --dependency" not in sbatch
    sbatch, command = blend_job
    assert step(command) == "blend" and only(command) == []
    dependency = next(line for line in sbatch.splitlines() if line.startswith("#SBATCH --dependency="))
    assert dependency == "#SBATCH --dependency=afterok:" + ":".join(f"{name.upper()}_JOB_ID" for name in jobs)
    for sbatch, _ in [*jobs.values(), blend_job]:  # the site's values; a whole CPU node, no GPU
        lines = sbatch.splitlines()
        for flag in ("--account=abc@cpu", "--qos=qos_cpu-t3", "--partition=cpu_p1", "--cpus-per-task=40",
                     "--exclusive", "--nodes=1", "--ntasks-per-node=1", "--kill-on-invalid-dep=yes"):
            assert f"#SBATCH {flag}" in lines, flag
        assert not any(line.startswith(("#SBATCH --gpus", "#SBATCH --gres", "#SBATCH --constraint")) for line in lines)
        assert "module load python/3.12" in lines and "source /lustre/work/lucie-venv/bin/activate" in lines
        assert "torchrun" not in sbatch


def test_phase_2_split_pairs_stay_in_one_job_and_only_reaches_the_blend_job(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no site config: the profile's example values, marked, under ./lucie-dry-run
    result = dry_run(hub, "extension", tmp_path / "data", "--cluster", "jeanzay", "--task-gb", "0.000001",
                     "--only", "Claire--en--MediaSum", "--only", "Wikipedia--fr")
    jobs = scripts(result)
    assert {name: only(command) for name, (_, command) in jobs.items()} == {  # the blend's order: increasing weight
        "data-001": [f"lucie_tokens_65k_splitted/length-{part}/Claire--en--MediaSum_text_document"
                     for part in ("0-4096", "4096-inf")],
        "data-002": [f"lucie_tokens_65k_splitted/length-{part}/Wikipedia--fr_text_document"
                     for part in ("0-4096", "4096-inf")],
        "data-blend": ["Claire--en--MediaSum", "Wikipedia--fr"],  # the blend file of the prefixes asked for
    }
    assert all(sbatch.splitlines()[1].startswith("# lucie: PLACEHOLDER values") for sbatch, _ in jobs.values())
    assert all(Path(line).is_relative_to(tmp_path / "lucie-dry-run") for line in result.stdout.splitlines()
               if line.endswith(".sh"))


def test_pyxis_jobs_see_the_data_root_in_the_container(hub, site_config, tmp_path):
    root = tmp_path / "data"
    jobs = scripts(dry_run(hub, "anneal", root, "--cluster", "eos", "--site-config", str(site_config)))
    assert list(jobs) == ["data-001", "data-blend"]
    for sbatch, _ in jobs.values():
        srun = next(line for line in sbatch.splitlines() if line.startswith("srun "))
        assert "--container-image nvcr.io/nvidia/nemo:26.08" in srun and f"{root}:{root}" in srun


@pytest.mark.parametrize("args, message", [
    (["--cluster", "nowhere"], "error: unknown cluster 'nowhere'"),
    (["--cluster", "local"], "error: --cluster local is not a Slurm profile"),
    ([], "error: --dry-run writes Slurm scripts: give --cluster NAME too"),
    (["--cluster", "jeanzay", "--task-gb", "0"], "error: the task size must be positive"),
])
def test_bad_input_is_one_error_line(hub, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = dry_run(hub, "pretrain", tmp_path / "data", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_submission_makes_the_blend_job_afterok_on_every_job(hub, site_config, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    sbatch = bin_dir / "sbatch"  # prints job ids 101, 102, ... like `sbatch --parsable`; nemo-run submits the
    # jobs of one level in parallel threads: the lock keeps the count atomic
    sbatch.write_text(f'#!/bin/bash\nexec 9>{calls}.lock\nflock 9\necho "$*" >> {calls}\n'
                      f'echo $((100 + $(wc -l < {calls})))\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    result = CliRunner().invoke(data_app, [
        "build", "pretrain", "--data-root", str(tmp_path / "data"), "--endpoint", hub.url, "--cluster", "jz",
        "--site-config", str(site_config), "--task-gb", "0.000001", "--only", "Wikipedia--fr", "--only", "TheStack--python"])
    assert result.exit_code == 0, result.output
    submitted = {line.split()[-1].rsplit("/", 1)[-1].removesuffix("_sbatch.sh"): line
                 for line in calls.read_text().splitlines()}  # the two data jobs go in parallel, in any order
    ids = dict(line.split(": Slurm job ") for line in result.stdout.splitlines() if ": Slurm job " in line)
    assert sorted(ids) == sorted(submitted) == ["data-001", "data-002", "data-blend"]
    assert ids == {name: str(101 + order) for order, name in enumerate(submitted)} and ids["data-blend"] == "103"
    assert "--dependency" not in submitted["data-001"] + submitted["data-002"]
    dependency = next(word for word in submitted["data-blend"].split() if word.startswith("--dependency="))
    assert sorted(dependency.removeprefix("--dependency=afterok:").split(":")) == ["101", "102"]
