"""The three training phases of Lucie-7B: every per-phase fact, declared once.

Values are those of the original Megatron-DeepSpeed run (tabulated in
docs/training.md). Recipes, the schedule, converters and the CLI read them here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from lucie_nemo.errors import UserError

LRStyle = Literal["cosine", "constant", "linear"]
DataOrder = Literal["original", "megatron"]  # the fork's sample stream, or megatron-core's (lucie_nemo.data)


@dataclass(frozen=True)
class BatchRampup:
    """Megatron's ``--rampup-batch-size START INCREMENT SAMPLES``."""

    start: int
    increment: int
    samples: int


@dataclass(frozen=True)
class LRSchedule:
    """A sample-based Megatron LR schedule (warmup and decay counted in samples)."""

    style: LRStyle
    max_lr: float
    min_lr: float
    warmup_samples: int
    decay_samples: int  # samples from 0 to the end of decay (Megatron's lr_decay_samples)


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW settings shared by every phase."""

    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-5


@dataclass(frozen=True)
class ParallelLayout:
    """How a run lays the model out on its allocation (a phase's: the original run's)."""

    tensor_parallel: int
    pipeline_parallel: int
    nodes: int
    gpus_per_node: int = 4
    context_parallel: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel(self) -> int:
        return self.world_size // (self.tensor_parallel * self.pipeline_parallel * self.context_parallel)


@dataclass(frozen=True)
class Phase:
    """One training phase: data volume, context, RoPE, batch, LR and checkpoints."""

    name: str  # CLI name: pretrain, extension, anneal
    revision_prefix: str  # "" for phase 1, "extension_" for phase 2, ...
    train_samples: int
    seq_length: int
    rotary_base: int
    global_batch_size: int
    micro_batch_size: int
    lr: LRSchedule
    save_interval: int
    original_layout: ParallelLayout
    blend: str  # which data blend the phase trains on (see lucie_nemo.data.blends)
    starts_from: str | None  # previous phase (weights only) or None for random init
    rampup: BatchRampup | None = None
    published_steps: tuple[int, ...] = ()  # steps released as Hub revisions
    optimizer: OptimizerSettings = OptimizerSettings()
    seed: int = 42
    data_order: DataOrder = "original"  # the order the original run read its blend in

    def revision(self, step: int) -> str:
        """Hub revision name of this phase's checkpoint at ``step``."""
        return f"{self.revision_prefix}step{step:07d}"

    def scaled(self, **changes) -> "Phase":
        """A copy with some fields changed (used by the tiny demo and by overrides)."""
        return replace(self, **changes)

    def overridden(self, *, seq_length: int | None = None, seed: int | None = None,
                   train_samples: int | None = None, data_order: str | None = None) -> "Phase":
        """A copy with the data facts given on a command line (None: the phase's own), checked."""
        if data_order is not None and data_order not in get_args(DataOrder):
            raise UserError(f"unknown data order {data_order!r}: choose one of {', '.join(get_args(DataOrder))}")
        for name, value in (("sequence length", seq_length), ("train samples", train_samples)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be a positive number, got {value}")
        given = dict(seq_length=seq_length, seed=seed, train_samples=train_samples, data_order=data_order)
        changes = {name: value for name, value in given.items() if value is not None}
        return replace(self, **changes) if changes else self  # the phase itself when nothing is overridden


PHASE1_STEPS = 753_851
_PHASE1_PUBLISHED = tuple(sorted({*range(5_000, 25_001, 5_000), *range(25_000, 750_001, 25_000), PHASE1_STEPS}))

PRETRAIN = Phase(
    name="pretrain",
    revision_prefix="",
    train_samples=762_144_586,
    seq_length=4_096,
    rotary_base=500_000,
    global_batch_size=1_024,
    micro_batch_size=2,
    rampup=BatchRampup(start=256, increment=64, samples=10_000_000),
    lr=LRSchedule(style="cosine", max_lr=3e-4, min_lr=3e-5, warmup_samples=2_000_000, decay_samples=762_144_586),
    save_interval=5_000,
    original_layout=ParallelLayout(tensor_parallel=4, pipeline_parallel=4, nodes=128),
    blend="pretrain",
    starts_from=None,
    published_steps=_PHASE1_PUBLISHED,
)

EXTENSION = Phase(
    name="extension",
    revision_prefix="extension_",
    train_samples=156_250,
    seq_length=32_000,
    rotary_base=20_000_000,
    global_batch_size=128,
    micro_batch_size=4,
    lr=LRSchedule(style="constant", max_lr=2e-5, min_lr=2e-5, warmup_samples=0, decay_samples=156_250),
    save_interval=250,
    original_layout=ParallelLayout(tensor_parallel=4, pipeline_parallel=4, nodes=32),
    blend="extension",
    starts_from="pretrain",
    published_steps=(250, 500, 750, 1_000, 1_220),
)

ANNEAL = Phase(
    name="anneal",
    revision_prefix="annealing_",
    train_samples=156_250,
    seq_length=32_000,
    rotary_base=20_000_000,
    global_batch_size=128,
    micro_batch_size=4,
    lr=LRSchedule(style="linear", max_lr=3e-5, min_lr=0.0, warmup_samples=0, decay_samples=156_250),
    save_interval=500,
    original_layout=ParallelLayout(tensor_parallel=4, pipeline_parallel=4, nodes=32),
    blend="anneal",
    starts_from="extension",
    published_steps=(),  # only the final annealed model, on the Hub's main branch
)

PHASES: dict[str, Phase] = {p.name: p for p in (PRETRAIN, EXTENSION, ANNEAL)}


def get_phase(name: str) -> Phase:
    """The phase called ``name``, with an error listing the valid names."""
    try:
        return PHASES[name]
    except KeyError:
        raise UserError(f"unknown phase {name!r}: choose one of {', '.join(PHASES)}") from None


def previous_phases(phase: Phase, phases: dict[str, Phase] = PHASES) -> list[Phase]:
    """The phases that ran before ``phase``, oldest first."""
    chain: list[Phase] = []
    current = phase
    while current.starts_from is not None:
        current = phases[current.starts_from]
        chain.insert(0, current)
    return chain


def trained_phase(phase: str, tiny: bool = False, overrides: dict | None = None) -> Phase:
    """The facts of ``phase`` as trained: Lucie's, or scaled down by lucie_nemo.demo_scale with ``tiny``, with
    ``overrides`` (Phase.overridden) applied."""
    selected = get_phase(phase)
    if tiny:
        from lucie_nemo.demo_scale import demo_phase

        selected = demo_phase(selected)
    return selected.overridden(**(overrides or {}))
