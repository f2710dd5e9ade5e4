"""Executor profiles: kinds of sites, each turned into a nemo-run executor from a Site's values.

- ``jeanzay``: a Jean Zay-style H100 partition: 4 GPUs per node, no containers; the nodes get
  their software from ``module load`` lines and a virtualenv with lucie-nemo installed.
- ``pyxis``: a Slurm cluster with Pyxis/enroot: NVIDIA's NeMo container, 8 GPUs per node.
- ``generic``: a plain Slurm cluster: a virtualenv, and only the Slurm options the site names
  (account, partition, QoS, constraint, modules all optional), GPUs or none.
- ``local``: this machine (CPU, or its GPUs), for tiny runs.

Every Slurm job runs one torchrun per node (nemo-run's torchrun launcher), which starts one
training process per GPU (one process on a node without GPUs).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import nemo_run as run

from cluster.site_config import SETTINGS, Site, merge_site, read_config
from lucie_nemo.errors import UserError

# A SIGTERM to the job's steps (Slurm's --signal=TERM@N before the time limit, `scancel --signal=TERM`, a
# preemption) reaches every process of the step. Only the trainers must act on it (save, then exit 0): torchrun
# would otherwise stop them after its 30 s grace, and the DataLoader workers would die (the trainers then
# crash on their next batch). So the step starts torchrun with SIGTERM ignored through a bash prefix in front
# of nemo-run's torchrun command; its children inherit the ignore until Megatron-Bridge installs its exit
# handler in the trainers (train.exit_signal_handler) and their DataLoader workers
# (train.exit_signal_handler_for_dataloader), and torchrun is told not to handle SIGTERM itself.
# (nemo-run writes srun_args into the script as they are, unquoted: the bash program is quoted here.)
TORCHRUN_IGNORES_SIGTERM = ("bash", "-c", shlex.quote('trap "" TERM; exec "$0" "$@"'))
SIGTERM_TO_TRAINERS_ONLY = {"PET_SIGNALS_TO_HANDLE": "SIGINT,SIGHUP,SIGQUIT"}  # torchrun --signals-to-handle

_COMMON = frozenset({"output_root", "data_root", "job_root", "gpus_per_node", "venv", "env"})
_SLURM = _COMMON | {
    "account", "partition", "qos", "constraint", "cpus_per_task", "mem", "walltime",
    "stop_margin_minutes", "sigterm_seconds", "max_retries", "sbatch",
}


@dataclass(frozen=True)
class Profile:
    """A kind of site: its documented defaults and the settings it accepts."""

    name: str
    description: str
    defaults: dict[str, Any]
    settings: frozenset[str]
    slurm: bool
    needs_account: bool = False
    needs_venv: bool = False  # the nodes run lucie from the site's virtualenv (no container)

    def check(self, site: Site) -> None:
        """Values a submission cannot do without, each error naming the setting."""
        if not self.slurm:
            return
        if self.needs_account and not site.account:
            raise UserError(f"cluster {site.name!r}: set account (Slurm --account) in the site config or --account")
        if not site.output_root or not Path(site.output_root).is_absolute():
            raise UserError(
                f"cluster {site.name!r}: output_root must be an absolute path on the cluster's shared file system "
                f"(got {site.output_root!r}): set it in the site config or with --output-root"
            )
        if self.needs_venv and not site.venv:
            raise UserError(
                f"cluster {site.name!r}: set venv, the virtualenv with lucie-nemo installed on the cluster "
                "(its bin/lucie and bin/torchrun run on the nodes)"
            )
        if site.sigterm_seconds >= site.stop_margin_minutes * 60:
            raise UserError(
                f"cluster {site.name!r}: sigterm_seconds ({site.sigterm_seconds}) must be shorter than "
                f"stop_margin_minutes ({site.stop_margin_minutes} min): the signal is a backstop for the timed stop"
            )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="jeanzay",
            description="Jean Zay-style H100 partition: 4 GPUs/node, modules + virtualenv, no containers",
            # 4 x 24 cores per node with hyper-threads off; 20 h is the longest standard QoS there.
            defaults=dict(gpus_per_node=4, constraint="h100", cpus_per_task=96, walltime="20:00:00",
                          sbatch={"hint": "nomultithread"}),
            settings=_SLURM | {"modules"},
            slurm=True,
            needs_account=True,
            needs_venv=True,
        ),
        Profile(
            name="pyxis",
            description="Slurm with Pyxis/enroot: NVIDIA NeMo container, 8 GPUs/node",
            # NeMo Framework 26.08 ships Megatron-Bridge 0.6 (match it to requirements.txt).
            defaults=dict(gpus_per_node=8, walltime="04:00:00", container_image="nvcr.io/nvidia/nemo:26.08",
                          sbatch={"exclusive": True}),
            settings=_SLURM | {"container_image", "container_mounts"},
            slurm=True,
            needs_account=True,
        ),
        Profile(
            name="generic",
            description="plain Slurm: a virtualenv, optional account/partition/qos/constraint/modules, GPUs or none",
            defaults=dict(gpus_per_node=8, walltime="04:00:00"),
            settings=_SLURM | {"modules"},
            slurm=True,
            needs_venv=True,
        ),
        Profile(
            name="local",
            description="this machine: CPU (gpus_per_node = 0) or its GPUs, for tiny runs",
            defaults=dict(gpus_per_node=0, output_root="runs", venv=sys.prefix),
            settings=_COMMON,
            slurm=False,
        ),
    )
}
assert all(p.settings <= SETTINGS for p in PROFILES.values())


def load_site(cluster: str, config: Path | None = None, **flags: Any) -> tuple[Site, Profile]:
    """The site ``cluster`` (a table of the site config, or a profile name) with ``flags`` on top."""
    tables, path = read_config(config)
    values = dict(tables.get(cluster, {}))
    profile_name = values.pop("profile", cluster)
    if profile_name not in PROFILES:
        known = ", ".join([*PROFILES, *(name for name in tables if name not in PROFILES)])
        where = f" (site config {path})" if path else ""
        raise UserError(f"unknown cluster {cluster!r}{where}: choose one of {known}")
    profile = PROFILES[profile_name]
    source = f"cluster {cluster!r}" + (f" in {path}" if path else "")
    given = {key: value for key, value in flags.items() if value is not None}
    site = merge_site(cluster, profile.name, profile.defaults, values | given, profile.settings, source)
    profile.check(site)
    if not profile.slurm:  # relative local paths: from the current folder, wherever the job runs
        site = replace(site, **{key: str(Path(getattr(site, key)).resolve())
                                for key in ("output_root", "job_root", "data_root") if getattr(site, key)})
    return site, profile


def _slurm_executor(site: Site, nodes: int, cpu_only: bool = False, **container: Any) -> run.SlurmExecutor:
    # Packager: the base run.Packager() packs nothing. The nodes run lucie-nemo from an install on
    # the cluster (the site's virtualenv, or the container), not from a git archive of this checkout:
    # nemo-run's default GitArchivePackager would drop uncommitted changes and needs a git checkout.
    # cpu_only (data preparation): one plain task on each whole node, no GPU, no GPU constraint, no torchrun.
    gpus = 0 if cpu_only else site.gpus_per_node
    sbatch = {**site.sbatch, "exclusive": True} if cpu_only else site.sbatch
    return run.SlurmExecutor(
        account=site.account or None,  # an empty value is no option, not `--account=''`
        partition=site.partition or None,
        qos=site.qos or None,
        constraint=None if cpu_only else site.constraint or None,
        cpus_per_task=site.cpus_per_task,
        mem=site.mem,
        nodes=nodes,
        ntasks_per_node=1 if cpu_only else max(gpus, 1),
        gpus_per_node=gpus or None,
        torchrun_nproc_per_node=max(gpus, 1),
        time=site.walltime,
        signal=f"TERM@{site.sigterm_seconds}",
        additional_parameters={"kill_on_invalid_dep": "yes", **sbatch},
        env_vars={**({} if cpu_only else SIGTERM_TO_TRAINERS_ONLY),
                  **{key: shlex.quote(str(value)) for key, value in site.env.items()}},
        srun_args=None if cpu_only else list(TORCHRUN_IGNORES_SIGTERM),
        job_name_prefix="lucie-",
        launcher=None if cpu_only else "torchrun",
        packager=run.Packager(),
        tunnel=run.LocalTunnel(job_dir=f"{site.jobs_folder}/experiments"),
        poll_estimated_start_time=False,
        **container,
    )


def _pyxis(site: Site, nodes: int, cpu_only: bool = False) -> run.SlurmExecutor:
    # The runs, the data and the virtualenv are seen inside the container at the same paths.
    mounts = list(site.container_mounts)
    for path in (site.output_root, site.data_root, site.venv):
        if path and f"{path}:{path}" not in mounts:
            mounts.append(f"{path}:{path}")
    return _slurm_executor(site, nodes, cpu_only, container_image=site.container_image, container_mounts=mounts)


def _local(site: Site, nodes: int, cpu_only: bool = False) -> run.LocalExecutor:
    # torchrun and lucie from the site's environment (default: the one running this command).
    return run.LocalExecutor(
        ntasks_per_node=max(site.gpus_per_node, 1),
        launcher="torchrun",
        env_vars={"PATH": f"{site.venv}/bin", **site.env},
    )


EXECUTORS: dict[str, Callable[..., run.Executor]] = {"jeanzay": _slurm_executor, "generic": _slurm_executor,
                                                     "pyxis": _pyxis, "local": _local}


def executor(site: Site, nodes: int, cpu_only: bool = False) -> run.Executor:
    """The nemo-run executor for ``nodes`` nodes of ``site`` (``cpu_only``: whole nodes, no GPU, no torchrun)."""
    return EXECUTORS[site.profile](site, nodes, cpu_only)


def setup_lines(site: Site) -> list[str]:
    """Shell lines that give the batch script and its nodes the training environment."""
    # nemo-run's script template runs under `set -evx`: stop echoing every line into the job log.
    lines = ["set +vx"]
    if site.profile == "jeanzay" or site.modules:
        lines += ["module purge"] + [f"module load {module}" for module in site.modules]
    if site.profile != "pyxis" and site.venv:
        lines.append(f"source {shlex.quote(site.venv)}/bin/activate")
    return lines
