"""Phases as one nemo-run Experiment: render the sbatch scripts (dry run), submit them, or run locally.

Slurm: one job per phase, each later phase ``afterok`` on the one before (nemo-run adds the
dependency when it submits), with ``--kill-on-invalid-dep=yes`` so that a failed phase cancels
the next instead of leaving it pending forever. Each job requeues itself until its phase is
finished (cluster/requeue.py). Local: the phases run one after the other in this process's
lifetime, and a failed phase stops the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nemo_run as run
from torchx.specs import AppState

from cluster.profiles import Profile, executor, setup_lines
from cluster.requeue import RequeuePolicy
from cluster.site_config import Site
from lucie_nemo.errors import UserError

FAILURES_FILE = "lucie_failed_attempts"


@dataclass(frozen=True)
class TrainingJob:
    """One phase as the cluster sees it: an allocation, a command and how to tell it is finished."""

    name: str  # phase name: job name and folder
    nodes: int
    lucie_args: tuple[str, ...]  # arguments of `lucie`, e.g. ("train", "pretrain", "--nodes", "128", ...)
    checkpoints: str  # the phase's checkpoint folder
    final_iteration: int  # the phase is finished once this iteration is checkpointed
    summary: str  # one line for the script's header, e.g. "pretrain: 128 nodes x 4 GPUs, TP4 PP4 DP32"


def new_experiment(site: Site, title: str) -> run.Experiment:
    """A nemo-run Experiment whose scripts and logs go under the site's jobs folder."""
    return run.Experiment(
        title, base_dir=site.jobs_folder, clean_mode=True, enable_goodbye_message=False, skip_status_at_exit=True
    )


def _add(exp: run.Experiment, site: Site, profile: Profile, job: TrainingJob, after: str | None,
         placeholder_dependency: bool = False) -> str:
    """Add ``job`` to ``exp`` (afterok on the job ``after``); returns its id in the experiment."""
    # A non-python entrypoint: torchrun starts the `lucie` executable itself (--no-python).
    task = run.Script(path=site.lucie, args=list(job.lucie_args), entrypoint="bash")
    job_executor = executor(site, job.nodes)
    if placeholder_dependency and after:
        # A dry run submits nothing, so the previous job's Slurm id is not known: show where it goes.
        job_executor.dependencies = [f"slurm_tunnel://nemo_run/{after.upper()}_JOB_ID"]
    job_id = exp.add(task, executor=job_executor, name=job.name, dependencies=[after] if after else None)
    if profile.slurm:
        added = exp.jobs[-1].executor
        policy = RequeuePolicy(
            checkpoints=job.checkpoints,
            final_iteration=job.final_iteration,
            max_retries=site.max_retries,
            failures_file=f"{added.job_dir}/{FAILURES_FILE}",
        )
        added.setup_lines = "\n".join([f"# {job.summary}", *setup_lines(site), policy.shell()])
    return job_id


def dry_run(site: Site, profile: Profile, jobs: list[TrainingJob], title: str) -> list[Path]:
    """Write the sbatch script of each job without submitting anything; returns their paths."""
    if not profile.slurm:
        raise UserError("--dry-run renders Slurm scripts; the local profile has none: run it without --dry-run")
    exp = new_experiment(site, title)
    with exp:
        after = None
        for job in jobs:
            after = _add(exp, site, profile, job, after, placeholder_dependency=True)
        exp.dryrun(log=False, delete_exp_dir=False)
        folder = Path(exp.jobs[0].executor.experiment_dir)
        return [folder / f"{job.name}_sbatch.sh" for job in jobs]


@dataclass(frozen=True)
class Submitted:
    """A phase's Slurm job: its id and the log of its first allocation (the n-th requeue writes ``_<n>.out``)."""

    name: str
    job_id: str
    log: str


def submit(site: Site, profile: Profile, jobs: list[TrainingJob], title: str) -> list[Submitted]:
    """Submit the jobs to Slurm, or run them here one after the other (then nothing is returned)."""
    if not profile.slurm:
        for job in jobs:
            _run_locally(site, profile, job, f"lucie-{job.name}")
        return []
    exp = new_experiment(site, title)
    with exp:
        after = None
        for job in jobs:
            after = _add(exp, site, profile, job, after)
        exp.run(detach=True)
    submitted = []
    for job in exp.jobs:
        job_id = job.handle.partition("://")[2].split("/")[1]  # slurm_tunnel://nemo_run/<id>
        log = str(job.executor.job_details.srun_stdout).replace("%j", job_id).replace("${SLURM_RESTART_COUNT:-0}", "0")
        submitted.append(Submitted(job.id, job_id, log))
    return submitted


def _run_locally(site: Site, profile: Profile, job: TrainingJob, title: str) -> None:
    exp = new_experiment(site, title)
    with exp:
        _add(exp, site, profile, job, None)
        exp.run(detach=False, tail_logs=True)
    state = exp.jobs[0].state
    if state != AppState.SUCCEEDED:
        raise UserError(f"phase {job.name} ended {state.name}: see the logs under {exp.jobs[0].executor.job_dir}")
