"""`lucie train`: train one phase in this process (or under torchrun/srun, as nemo-run does)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors


def train(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. train.global_batch_size=512")] = None,
    nodes: Annotated[Optional[int], typer.Option(help="Nodes of the allocation (default: the phase's original)")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(help="GPUs per node")] = None,
    precision: Annotated[str, typer.Option(help="bf16 or fp8")] = "bf16",
    layout: Annotated[str, typer.Option(help="fast (the plan's), original, or TPxPPxCP, e.g. TP1xPP1xCP1")] = "fast",
    leg: Annotated[Optional[str], typer.Option(help="rampup or main, when the layout runs the phase in two legs")] = None,
    output_root: Annotated[str, typer.Option(help="Runs folder: <root>/<phase>/checkpoints, tensorboard")] = "runs",
    data_root: Annotated[Optional[str], typer.Option(help="Folder of the tokenised datasets (default: mock data)")] = None,
    blend_file: Annotated[Optional[str], typer.Option(help="Blend file (default: the phase's Lucie blend)")] = None,
    data_order: Annotated[Optional[str], typer.Option(help="original (the original run's sample stream, the "
                                                           "phases' default) or megatron (megatron-core's)")] = None,
    initial_checkpoint: Annotated[Optional[str], typer.Option(help="Weights to start phases 2-3 from")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Scaled-down phase on a tiny Lucie-shaped model")] = False,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary of the tiny model")] = None,
) -> None:
    """Train PHASE with Megatron-Bridge (resumes from the phase's own last checkpoint if any)."""
    with user_errors():
        from lucie_nemo.train import train_phase

        options = dict(
            overrides=overrides or [], tiny=tiny, vocab_size=vocab_size, precision=precision,
            output_root=output_root, data_root=data_root, blend_file=blend_file,
            initial_checkpoint=initial_checkpoint, layout=layout, leg=leg,
            phase_overrides={"data_order": data_order} if data_order else None,
        )
        if nodes is not None:
            options["nodes"] = nodes
        if gpus_per_node is not None:
            options["gpus_per_node"] = gpus_per_node
        train_phase(phase, **options)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
