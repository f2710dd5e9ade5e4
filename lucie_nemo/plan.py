"""`lucie plan`: every valid parallel layout of a phase on an allocation, with memory and throughput
estimates, and the recommended plan (one leg, or two when the batch rampup forbids the fastest layout).

Validity rules (those of lucie_nemo.validation, applied to every candidate): TP within a node and
dividing the attention heads, the query groups and the vocabulary; PP dividing the layers; CP only
for the long-context phases, with the sequence divisible by 2 x CP; TP x PP x CP dividing the GPUs;
DP x micro-batch dividing the global batch of every step the layout runs. During phase 1's rampup
(256 -> 1,024 by 64) that means DP x mbs divides 64, so a layout with more data parallelism can only
run the steps after it: the plan then has a rampup leg and a main leg.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

from lucie_nemo.architecture import LUCIE_7B, LucieShape
from lucie_nemo.errors import UserError
from lucie_nemo.memory_estimate import MemoryEstimate, Recompute, Split, estimate_memory
from lucie_nemo.phases import Phase
from lucie_nemo.schedule import PhaseSchedule
from lucie_nemo.throughput_estimate import Hardware, ThroughputEstimate, estimate_throughput

MICRO_BATCH_SIZES = (1, 2, 4, 8)
CONTEXT_PARALLEL_FROM_SEQ = 8_192  # CP is only worth its communication for long sequences


@dataclass(frozen=True)
class LayoutChoice:
    """A layout as the recipes take it: the model split, the micro-batch and the recompute setting."""

    tensor_parallel: int
    pipeline_parallel: int
    context_parallel: int
    micro_batch_size: int
    recompute: Recompute

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    def name(self) -> str:
        return f"TP{self.tensor_parallel}xPP{self.pipeline_parallel}xCP{self.context_parallel}"


@dataclass(frozen=True)
class Candidate:
    """One layout on the allocation with its estimates."""

    choice: LayoutChoice
    data_parallel: int
    memory: MemoryEstimate
    throughput: ThroughputEstimate
    valid_from_step: int  # first step whose global batch it can run (1 unless the rampup forbids it)
    fits: bool

    def row(self, from_step: int, to_step: int) -> dict:
        c = self.choice
        return {
            "from_step": from_step,
            "to_step": to_step,
            "tensor_parallel": c.tensor_parallel,
            "pipeline_parallel": c.pipeline_parallel,
            "context_parallel": c.context_parallel,
            "data_parallel": self.data_parallel,
            "micro_batch_size": c.micro_batch_size,
            "memory_gib": round(self.memory.total_gib, 2),
            "recompute": c.recompute,
        }


def original_recompute(seq_length: int, micro_batch_size: int) -> Recompute:
    """Activation recompute of the original layouts on 80 GB H100s. At 4,096 x mbs 2 with TP4 +
    sequence parallel and flash attention, a stage's activations (8 layers, <= 4 micro-batches in
    flight) take ~10 GB: no recompute. At 32,000 x mbs 4 they would take ~140 GB, so keep only
    each layer's input (full, uniform, 1 layer) and recompute the rest."""
    return "full" if seq_length * micro_batch_size > 4_096 * 2 else "none"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def rampup_batch_sizes(phase: Phase) -> list[int]:
    """The global batches of the rampup's stages (none without a rampup)."""
    rampup = phase.rampup
    return [] if rampup is None else list(range(rampup.start, phase.global_batch_size, rampup.increment))


def batch_sizes_from(phase: Phase, step: int) -> list[int]:
    """The global batches of the steps from ``step`` to the end of the phase."""
    stages = rampup_batch_sizes(phase) if step <= rampup_last_step(phase) else []
    return stages + [phase.global_batch_size]


@functools.cache
def rampup_last_step(phase: Phase) -> int:
    """The last step whose global batch is below the final one (0 without a rampup)."""
    if phase.rampup is None:
        return 0
    schedule = PhaseSchedule(phase)
    step = schedule.rampup_iters
    while step and schedule.global_batch_size(step) == phase.global_batch_size:
        step -= 1
    return step


def _valid_from_step(phase: Phase, data_parallel: int, micro_batch_size: int) -> int | None:
    """1 if every batch of the phase splits over DP x mbs, the step after the rampup if only the final
    batch does, None if not even that."""
    unit = data_parallel * micro_batch_size
    if phase.global_batch_size % unit:
        return None
    if all(batch % unit == 0 for batch in rampup_batch_sizes(phase)):
        return 1
    return rampup_last_step(phase) + 1


def structural_splits(phase: Phase, shape: LucieShape, world_size: int, gpus_per_node: int):
    """(TP, PP, CP) triples that satisfy the model's divisibility rules on ``world_size`` GPUs."""
    tps = [tp for tp in _divisors(gpus_per_node)
           if shape.num_attention_heads % tp == 0 and shape.num_query_groups % tp == 0 and shape.vocab_size % tp == 0]
    pps = _divisors(shape.num_layers)
    cps = [1]
    if phase.seq_length > CONTEXT_PARALLEL_FROM_SEQ:
        cps = [cp for cp in (1, 2, 4, 8) if phase.seq_length % (2 * cp) == 0]
    for tp, pp, cp in itertools.product(tps, pps, cps):
        if world_size % (tp * pp * cp) == 0:
            yield tp, pp, cp


def evaluate(phase: Phase, choice: LayoutChoice, world_size: int, gpus_per_node: int, precision: str,
             hardware: Hardware, shape: LucieShape = LUCIE_7B) -> tuple[int, MemoryEstimate, ThroughputEstimate]:
    dp = world_size // choice.model_parallel
    split = Split(choice.tensor_parallel, choice.pipeline_parallel, choice.context_parallel, dp)
    microbatches = max(phase.global_batch_size // (dp * choice.micro_batch_size), 1)
    memory = estimate_memory(shape, split, seq_length=phase.seq_length, micro_batch_size=choice.micro_batch_size,
                             microbatches=microbatches, precision=precision, recompute=choice.recompute)
    throughput = estimate_throughput(shape, split, seq_length=phase.seq_length,
                                     global_batch_size=phase.global_batch_size,
                                     micro_batch_size=choice.micro_batch_size, gpus_per_node=gpus_per_node,
                                     precision=precision, recompute=choice.recompute, hardware=hardware)
    return dp, memory, throughput


def candidates(phase: Phase, nodes: int, gpus_per_node: int, precision: str = "bf16",
               hardware: Hardware = Hardware(), shape: LucieShape = LUCIE_7B) -> list[Candidate]:
    """Every valid layout (each with the lightest recompute setting that fits), fastest first."""
    world = nodes * gpus_per_node
    found = []
    for tp, pp, cp in structural_splits(phase, shape, world, gpus_per_node):
        dp = world // (tp * pp * cp)
        for mbs in MICRO_BATCH_SIZES:
            start = _valid_from_step(phase, dp, mbs)
            if start is None:
                continue
            for recompute in ("none", "full"):
                choice = LayoutChoice(tp, pp, cp, mbs, recompute)
                _, memory, throughput = evaluate(phase, choice, world, gpus_per_node, precision, hardware, shape)
                fits = memory.total_gib <= hardware.usable_gib
                if fits or recompute == "full":
                    found.append(Candidate(choice, dp, memory, throughput, start, fits))
                    break
    return sorted(found, key=_rank)


def _rank(candidate: Candidate):
    """Fitting layouts first, then faster, then less model parallelism, smaller micro-batches."""
    return (not candidate.fits, -candidate.throughput.tokens_per_second_per_gpu,
            candidate.choice.model_parallel, candidate.choice.micro_batch_size)


@dataclass(frozen=True)
class Leg:
    """A stretch of a phase's steps run in one layout."""

    name: str  # "rampup", "main", or "all"
    from_step: int
    to_step: int
    candidate: Candidate


@dataclass(frozen=True)
class Plan:
    phase: Phase
    nodes: int
    gpus_per_node: int
    precision: str
    hardware: Hardware
    legs: tuple[Leg, ...]
    layouts: tuple[Candidate, ...]
    original: Candidate | None  # None when the original split does not fit this allocation's GPU count

    @property
    def train_iters(self) -> int:
        return PhaseSchedule(self.phase).train_iters

    def to_json(self) -> dict:
        end = self.train_iters
        original = None
        if self.original is not None:
            original = self.original.row(1, end)
        return {
            "phase": self.phase.name,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "legs": [{"leg": leg.name, **leg.candidate.row(leg.from_step, leg.to_step), **_rates(leg.candidate)}
                     for leg in self.legs],
            "layouts": [{**c.row(c.valid_from_step, end), "valid_for_steps": [c.valid_from_step, end],
                         "fits": c.fits, **_rates(c)} for c in self.layouts],
            "original": original if original is None else {**original, **_rates(self.original)},
        }


def _rates(candidate: Candidate) -> dict:
    return {"tokens_per_second_per_gpu": round(candidate.throughput.tokens_per_second_per_gpu),
            "mfu": round(candidate.throughput.mfu, 3)}


def make_plan(phase: Phase, nodes: int, gpus_per_node: int, precision: str = "bf16",
              hardware: Hardware = Hardware()) -> Plan:
    """The recommended legs for ``phase`` on ``nodes`` x ``gpus_per_node`` GPUs."""
    if nodes < 1 or gpus_per_node < 1:
        raise UserError("--nodes and --gpus-per-node must be at least 1")
    if precision not in hardware.tflops:
        raise UserError(f"precision {precision!r} is not one of {', '.join(hardware.tflops)}")
    found = candidates(phase, nodes, gpus_per_node, precision, hardware)
    fitting = [c for c in found if c.fits]
    if not fitting:
        raise UserError(
            f"no layout of phase {phase.name!r} fits {nodes} x {gpus_per_node} GPUs of "
            f"{hardware.memory_gib:g} GiB: use more GPUs, or a GPU count divisible by the global batch's factors")
    end = PhaseSchedule(phase).train_iters
    best = fitting[0]
    if best.valid_from_step == 1:
        legs = (Leg("all", 1, end, best),)
    else:
        rampup = [c for c in fitting if c.valid_from_step == 1]
        if not rampup:
            raise UserError(f"no layout that fits can run phase {phase.name!r}'s batch rampup on "
                            f"{nodes} x {gpus_per_node} GPUs: DP x micro-batch must divide {phase.rampup.increment}")
        legs = (Leg("rampup", 1, best.valid_from_step - 1, rampup[0]), Leg("main", best.valid_from_step, end, best))
    return Plan(phase, nodes, gpus_per_node, precision, hardware, legs, tuple(found),
                _original(phase, nodes, gpus_per_node, precision, hardware))


def _original(phase: Phase, nodes: int, gpus_per_node: int, precision: str, hardware: Hardware) -> Candidate | None:
    layout = phase.original_layout
    world = nodes * gpus_per_node
    if world % (layout.tensor_parallel * layout.pipeline_parallel):
        return None
    recompute = original_recompute(phase.seq_length, phase.micro_batch_size)
    choice = LayoutChoice(layout.tensor_parallel, layout.pipeline_parallel, 1, phase.micro_batch_size, recompute)
    dp, memory, throughput = evaluate(phase, choice, world, gpus_per_node, precision, hardware)
    start = _valid_from_step(phase, dp, phase.micro_batch_size) or 0
    return Candidate(choice, dp, memory, throughput, start, memory.total_gib <= hardware.usable_gib)


LAYOUT_SPECS = "fast, original, or TPxPPxCP (e.g. TP1xPP1xCP1)"
_SPLIT = re.compile(r"^TP(\d+)xPP(\d+)xCP(\d+)$", re.IGNORECASE)


def names_a_split(spec: str) -> bool:
    """Whether a ``--layout`` spec is an explicit ``TPxPPxCP`` split rather than ``fast`` or ``original``."""
    return spec not in ("fast", "original")


def parse_split(spec: str) -> tuple[int, int, int]:
    """(TP, PP, CP) of a ``TPxPPxCP`` layout spec."""
    match = _SPLIT.match(spec)
    if not match:
        raise UserError(f"--layout {spec!r} is not one of {LAYOUT_SPECS}")
    tp, pp, cp = (int(value) for value in match.groups())
    return tp, pp, cp


def layout_legs(phase: Phase, spec: str, nodes: int, gpus_per_node: int, precision: str = "bf16",
                hardware: Hardware = Hardware()) -> tuple[Leg, ...]:
    """The legs a ``--layout`` runs: ``fast`` the plan's (two for phase 1 when the rampup forbids the
    fastest layout), ``original`` the phase's original split and micro-batch, ``TPxPPxCP`` that split
    with the micro-batch and recompute the plan finds best for it (it must run every step)."""
    end = PhaseSchedule(phase).train_iters
    if spec == "fast":
        return make_plan(phase, nodes, gpus_per_node, precision, hardware).legs
    if spec == "original":
        original = _original(phase, nodes, gpus_per_node, precision, hardware)
        if original is None:
            layout = phase.original_layout
            raise UserError(f"world size {nodes * gpus_per_node} is not divisible by TP x PP x CP = "
                            f"{layout.tensor_parallel} x {layout.pipeline_parallel} x 1 (the original layout): "
                            "change --nodes or --layout")
        return (Leg("all", 1, end, original),)
    tp, pp, cp = parse_split(spec)
    found = [c for c in candidates(phase, nodes, gpus_per_node, precision, hardware)
             if (c.choice.tensor_parallel, c.choice.pipeline_parallel, c.choice.context_parallel) == (tp, pp, cp)]
    whole = [c for c in found if c.valid_from_step == 1]
    if not whole:
        why = ("it cannot run the batch rampup's batches (use --layout fast: two legs)" if found else
               "it breaks the layout rules on this allocation (see `lucie plan`)")
        raise UserError(f"--layout {spec}: {why}")
    return (Leg("all", 1, end, whole[0]),)


def select_leg(legs: tuple[Leg, ...], name: str | None) -> Leg:
    """The leg called ``name`` (may be omitted when there is only one)."""
    if name is None and len(legs) == 1:
        return legs[0]
    for leg in legs:
        if leg.name == name:
            return leg
    names = ", ".join(leg.name for leg in legs)
    given = "no --leg" if name is None else f"--leg {name!r}"
    raise UserError(f"{given}: this layout runs the phase in the legs {names}: pass --leg with one of them")
