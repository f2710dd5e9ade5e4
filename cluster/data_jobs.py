"""`lucie data build --cluster`: a phase's datasets built as Slurm jobs through nemo-run.

The blend's datasets (`lucie_nemo.data.build.build_tasks`: phase 2's short and long prefixes of one name are
one run) are packed in blend order into jobs of at most ``max_bytes`` of Parquet input (a larger dataset is a
job of its own). Each job takes one whole node and runs ``lucie data build PHASE --step datasets --only ...``
(complete datasets are skipped, an interrupted one resumes); a final job, ``afterok`` on all of them, runs
``--step blend``: it writes ``DATA_ROOT/blend-PHASE.txt`` and checks it. The jobs use no GPU.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import nemo_run as run

from cluster.experiment import new_experiment
from cluster.profiles import Profile, executor, setup_lines
from cluster.site_config import Site
from lucie_nemo.data.build import BuildTask
from lucie_nemo.errors import UserError

FINAL_JOB = "data-blend"


@dataclass(frozen=True)
class DataJob:
    """One Slurm job of a build: its name, the `lucie` arguments it runs, a line for its script's header."""

    name: str
    lucie_args: tuple[str, ...]
    summary: str


def pack(tasks: list[BuildTask], max_bytes: int) -> list[list[BuildTask]]:
    """The tasks in order, grouped so that a group's bytes stay within ``max_bytes`` (or it is one task)."""
    if max_bytes <= 0:
        raise UserError(f"the task size must be positive (got {max_bytes} bytes): pass --task-gb, e.g. 200")
    groups: list[list[BuildTask]] = []
    size = 0
    for task in tasks:
        if groups and size + task.bytes <= max_bytes:
            groups[-1].append(task)
            size += task.bytes
        else:
            groups.append([task])
            size = task.bytes
    return groups


def build_jobs(phase: str, common_args: list[str], tasks: list[BuildTask], max_bytes: int,
               only: tuple[str, ...] = ()) -> list[DataJob]:
    """A job per group of tasks, then the final blend job (of the prefixes ``only`` names, or all);
    ``common_args`` follow ``data build PHASE`` in every job."""
    groups = pack(tasks, max_bytes)
    jobs = []
    for number, group in enumerate(groups, 1):
        prefixes = [prefix for task in group for prefix in task.prefixes]
        size = sum(task.bytes for task in group)
        jobs.append(DataJob(
            name=f"data-{number:03d}",
            lucie_args=("data", "build", phase, *common_args, "--step", "datasets", "--no-progress",
                        *(f"--only={prefix}" for prefix in prefixes)),
            summary=f"lucie: {phase} data, job {number} of {len(groups)}: {len(group)} dataset(s), "
                    f"{size / 1e9:.2f} GB of Parquet",
        ))
    final = ("data", "build", phase, *common_args, "--step", "blend", "--no-progress", *(f"--only={n}" for n in only))
    jobs.append(DataJob(FINAL_JOB, final,
                        f"lucie: {phase} data: write and check the blend file once every job succeeded"))
    return jobs


def _add(exp: run.Experiment, site: Site, job: DataJob, after: list[str], dry_run: bool) -> str:
    task = run.Script(inline=shlex.join([site.lucie, *job.lucie_args]))
    job_executor = executor(site, 1, cpu_only=True)
    if dry_run and after:  # nothing is submitted, so the Slurm ids are unknown: show where they go
        job_executor.dependencies = [f"slurm_tunnel://nemo_run/{name.upper()}_JOB_ID" for name in after]
    job_id = exp.add(task, executor=job_executor, name=job.name, dependencies=after or None)
    exp.jobs[-1].executor.setup_lines = "\n".join([f"# {job.summary}", *setup_lines(site)])
    return job_id


def _experiment_with(site: Site, jobs: list[DataJob], title: str, dry_run: bool) -> run.Experiment:
    exp = new_experiment(site, title)
    with exp:
        ids = [_add(exp, site, job, [], dry_run) for job in jobs[:-1]]
        _add(exp, site, jobs[-1], ids, dry_run)
        if dry_run:
            exp.dryrun(log=False, delete_exp_dir=False)
        else:
            exp.run(detach=True)
    return exp


def render(site: Site, jobs: list[DataJob], title: str) -> list[Path]:
    """Write the sbatch script of each job, submitting nothing; returns their paths."""
    exp = _experiment_with(site, jobs, title, dry_run=True)
    folder = Path(exp.jobs[0].executor.experiment_dir)
    return [folder / f"{job.name}_sbatch.sh" for job in jobs]


def submit(site: Site, jobs: list[DataJob], title: str) -> list[tuple[str, str]]:
    """Submit the jobs; returns (job name, Slurm job id) pairs."""
    exp = _experiment_with(site, jobs, title, dry_run=False)
    return [(job.id, job.handle.partition("://")[2].split("/")[1]) for job in exp.jobs]


def require_slurm(profile: Profile) -> None:
    """Refuse the local profile: a build here runs without --cluster."""
    if not profile.slurm:
        raise UserError(f"--cluster {profile.name} is not a Slurm profile: build here without --cluster")
