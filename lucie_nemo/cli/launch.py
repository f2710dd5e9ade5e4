"""`lucie launch`: validate a phase's recipe for an allocation, then submit it through nemo-run
(Slurm profiles) or run it here (local profile); ``all`` chains pretrain -> extension -> anneal.
A phase run in two legs (phase 1 under ``--layout fast``) is two chained jobs, like two phases."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors

ALL = "all"


def _default_nodes(phase, gpus_per_node: int, tiny: bool, slurm: bool) -> int:
    """The phase's original GPU count (so its original DP) on this site's nodes; 1 for tiny or local runs."""
    if tiny or not slurm:
        return 1
    gpus = phase.original_layout.world_size
    return gpus // gpus_per_node if gpus % gpus_per_node == 0 else phase.original_layout.nodes


def keep_stdout_for_results() -> None:
    """stdout carries the job summaries and script paths (scriptable); building the configs here
    logs megatron's mock-data choices at INFO and nemo-run's launcher notes on stdout: send those
    notes to stderr and drop the config chatter (the training job logs it again where it runs)."""
    import logging
    import warnings

    from nemo_run.core.frontend.console.api import CONSOLE

    CONSOLE.stderr = True
    logging.getLogger("megatron.core.datasets.blended_megatron_dataset_config").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Could not determine rank")  # no rank on the launch host


def training_jobs(site, profile, phase_name: str, *, nodes: int | None, precision: str, tiny: bool,
                  overrides: list[str], layout: str = "fast", blend_file: str | None = None,
                  require_start: bool = False):
    """The `lucie train` command of each leg of one phase on ``site`` (one leg, or the rampup and main
    legs of phase 1 under ``fast``), each recipe validated for that allocation; with ``require_start``, the
    checkpoint the phase starts from must be there already (a submission that nothing before it writes)."""
    from cluster.experiment import TrainingJob
    from cluster.requeue import exit_duration_minutes
    from lucie_nemo import runtime
    from lucie_nemo.phases import get_phase
    from lucie_nemo.plan import layout_legs
    from lucie_nemo.leg_config import build_leg_config
    from lucie_nemo.validation import validate_config

    phase = get_phase(phase_name)
    gpus = max(site.gpus_per_node, 1)
    nodes = nodes or _default_nodes(phase, gpus, tiny, profile.slurm)
    generated = []
    if profile.slurm:
        # Save and stop before the time limit (the job then requeues itself); SIGTERM also saves
        # (cluster/profiles.py: how the signal reaches the trainers and spares torchrun and the DataLoader workers).
        minutes = exit_duration_minutes(site.walltime_minutes, site.stop_margin_minutes)
        generated = [f"train.exit_duration_in_mins={minutes}", "train.exit_signal_handler=true",
                     "train.exit_signal_handler_for_dataloader=true"]
    options = dict(nodes=nodes, gpus_per_node=gpus, precision=precision, output_root=site.output_root,
                   data_root=site.data_root, blend_file=blend_file)
    legs = (None,) if tiny else layout_legs(phase, layout, nodes, gpus, precision)

    runtime.prepare()
    jobs = []
    for leg in legs:
        leg_option = {"leg": leg.name} if leg is not None and len(legs) > 1 else {}
        cfg, batch_sizes = build_leg_config(phase.name, overrides=generated + overrides, tiny=tiny, layout=layout,
                                            **leg_option, **options)
        checked = validate_config(cfg, nodes * gpus, batch_sizes=batch_sizes)
        if require_start and leg is legs[0]:
            from lucie_nemo.checkpoint_load import require_initial_checkpoint  # Megatron: after runtime.prepare()

            require_initial_checkpoint(cfg.checkpoint, phase.name)
        model = cfg.model
        described = (f"TP{model.tensor_model_parallel_size} PP{model.pipeline_model_parallel_size} "
                     f"CP{model.context_parallel_size} DP{checked.data_parallel_size}")
        last = cfg.train.exit_interval or cfg.train.train_iters

        args = ["train", phase.name]
        for option, value in options.items():
            if value is not None:
                args += [f"--{option.replace('_', '-')}", str(value)]
        args += ["--layout", layout] + (["--leg", leg_option["leg"]] if leg_option else [])
        args += (["--tiny"] if tiny else []) + generated + overrides
        name, steps = phase.name, ""
        if leg_option:
            name, steps = f"{phase.name}-{leg.name}", f" ({leg.name} leg, steps {leg.from_step}-{leg.to_step})"
        # A leg's script stops at the leg's last step, not at the phase's.
        iterations = (f"stops at iteration {last} of {cfg.train.train_iters}" if leg_option
                      else f"{cfg.train.train_iters} iterations")
        jobs.append(TrainingJob(
            name=name,
            nodes=nodes,
            lucie_args=tuple(args),
            checkpoints=cfg.checkpoint.save,
            final_iteration=last,
            summary=(f"lucie: {phase.name}{steps} on {nodes} nodes x {gpus} GPUs: {described}, "
                     f"mbs {cfg.train.micro_batch_size}, {iterations} "
                     "(recipe validated before rendering)"),
        ))
    return jobs


def launch(
    phase: Annotated[str, typer.Argument(help="pretrain, extension, anneal, or all (the three, chained)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value recipe overrides, passed to `lucie train`")] = None,
    cluster: Annotated[str, typer.Option(help="Profile (jeanzay, pyxis, generic, local) or a table of the site config")] = "local",
    site_config: Annotated[Optional[Path], typer.Option(help="Site TOML (default ~/.config/lucie-nemo/clusters.toml)")] = None,
    nodes: Annotated[Optional[int], typer.Option(help="Nodes per phase (default: the phase's original GPU count)")] = None,
    precision: Annotated[str, typer.Option(help="bf16 or fp8")] = "bf16",
    layout: Annotated[str, typer.Option(help="fast (the plan's legs), original, or TPxPPxCP")] = "fast",
    tiny: Annotated[bool, typer.Option("--tiny", help="Scaled-down phases on a tiny Lucie-shaped model")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the sbatch scripts, print their paths, submit nothing")] = False,
    account: Annotated[Optional[str], typer.Option(help="Slurm account (overrides the site config)")] = None,
    partition: Annotated[Optional[str], typer.Option(help="Slurm partition")] = None,
    qos: Annotated[Optional[str], typer.Option(help="Slurm QoS")] = None,
    walltime: Annotated[Optional[str], typer.Option(help="Job time limit, HH:MM:SS or D-HH:MM:SS")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(help="GPUs per node (0: CPU nodes, one training process each)")] = None,
    output_root: Annotated[Optional[str], typer.Option(help="Runs folder: <root>/<phase>/checkpoints, tensorboard")] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Tokenised datasets (default: mock data)")] = None,
    blend_file: Annotated[Optional[Path], typer.Option(help="Blend file of the phase (default: its Lucie blend)")] = None,
    job_root: Annotated[Optional[str], typer.Option(help="nemo-run jobs folder (default <output-root>/jobs)")] = None,
) -> None:
    """Launch PHASE on a cluster profile: validate, then submit (or --dry-run: write the sbatch scripts)."""
    with user_errors():
        from cluster.experiment import dry_run as render, submit
        from cluster.placeholders import DRY_RUN_FOLDER, mark_scripts, notice, placeholder_values
        from cluster.profiles import load_site
        from lucie_nemo.errors import UserError
        from lucie_nemo.phases import PHASES, get_phase

        keep_stdout_for_results()
        flags = dict(account=account, partition=partition, qos=qos, walltime=walltime, gpus_per_node=gpus_per_node,
                     output_root=output_root, data_root=data_root, job_root=job_root)
        placeholders = placeholder_values(cluster, site_config, flags) if dry_run else {}
        if placeholders and job_root is None:
            flags["job_root"] = str(Path.cwd() / DRY_RUN_FOLDER)
        given = {key: value for key, value in flags.items() if value is not None}
        site, profile = load_site(cluster, site_config, **(placeholders | given))
        names = list(PHASES) if phase == ALL else [get_phase(phase).name]
        if blend_file is not None and phase == ALL:
            raise UserError("--blend-file is one phase's blend: launch the phases one at a time to give each its own")
        # Submitted alone, a phase starts from a checkpoint that must exist now (in a chain, the phase before
        # it writes it); a dry run renders scripts anywhere.
        jobs = [
            job
            for index, name in enumerate(names)
            for job in training_jobs(site, profile, name, nodes=nodes, precision=precision, tiny=tiny,
                                     overrides=overrides or [], layout=layout,
                                     blend_file=str(blend_file.absolute()) if blend_file else None,
                                     require_start=not dry_run and index == 0)
        ]
        title = f"lucie-{phase}"
        if dry_run:
            for job in jobs:
                print(f"# {job.summary}")
            paths = render(site, profile, jobs, title)
            if placeholders:
                mark_scripts(paths, placeholders)
                print("\n".join(notice(placeholders)), file=sys.stderr)
            for path in paths:
                print(path)
            return
        for job in submit(site, profile, jobs, title):
            print(f"{job.name}: Slurm job {job.job_id}; follow it with: tail -F {job.log}")


def register(app: typer.Typer) -> None:
    app.command("launch")(launch)
