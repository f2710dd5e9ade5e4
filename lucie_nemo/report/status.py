"""Where each phase of a run stands against its plan: progress, ETA, checkpoints and deviations."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from lucie_nemo.errors import UserError
from lucie_nemo.phases import PHASES
from lucie_nemo.report.events import Scalars, read_scalars
from lucie_nemo.report.plan import RunPlan, read_run_plan
from lucie_nemo.schedule import PhaseSchedule

# A logged LR matches the plan within LR_REL_TOLERANCE of it, or LR_ABS_TOLERANCE x the phase's peak LR
# near zero (Megatron logs float32: about 6e-8 relative error). Batch sizes must match exactly.
LR_REL_TOLERANCE = 1e-5
LR_ABS_TOLERANCE = 1e-6
THROUGHPUT_WINDOW = 20  # logged iterations the current throughput and the ETA are taken over
_CHECKPOINT = re.compile(r"iter_(\d{7})")


@dataclass(frozen=True)
class Deviation:
    """A logged step whose LR or global batch differs from the plan."""

    phase: str
    step: int
    quantity: str  # "learning-rate" or "batch-size"
    logged: float
    planned: float | None  # None: the step is past the end of the planned schedule


@dataclass(frozen=True)
class Checkpoint:
    step: int
    cumulative_tokens: int
    revision: str | None  # the Hub revision it becomes, None for an extra save (a rampup batch change)


@dataclass
class PhaseStatus:
    """One phase of the run: its plan, what its event files logged, its checkpoints."""

    plan: RunPlan
    scalars: Scalars
    checkpoints: list[Checkpoint]
    step_offset: int  # steps of the earlier phases of this run
    token_offset: int  # tokens of the earlier phases of this run
    deviations: list[Deviation] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.phase.name

    @cached_property
    def schedule(self) -> PhaseSchedule:
        """The phase's own step accounting (the earlier phases are counted by the offsets)."""
        return PhaseSchedule(replace(self.plan.phase, starts_from=None))

    def series(self, tag: str) -> dict[int, float]:
        return self.scalars.get(tag, {})

    @property
    def steps_done(self) -> int:
        return max(self.series("learning-rate") or self.series("lm loss") or {0: 0})

    def consumed_samples(self) -> dict[int, int]:
        """Samples consumed after each logged step, from the "vs samples" twin of the loss."""
        steps, samples = sorted(self.series("lm loss")), sorted(self.series("lm loss vs samples"))
        if len(steps) != len(samples):  # not Megatron's logging: count them as the plan does
            samples = [self.schedule.consumed_samples(min(step, self.schedule.train_iters)) for step in steps]
        return dict(zip(steps, samples))

    @property
    def tokens_done(self) -> int:
        samples = self.consumed_samples()
        return samples[max(samples)] * self.plan.phase.seq_length if samples else 0

    def loss_by_tokens(self) -> tuple[list[int], list[float]]:
        """The loss against the run's cumulative tokens."""
        loss, samples = self.series("lm loss"), self.consumed_samples()
        steps = sorted(loss)
        return ([self.token_offset + samples[s] * self.plan.phase.seq_length for s in steps], [loss[s] for s in steps])

    @property
    def last_loss(self) -> float | None:
        loss = self.series("lm loss")
        return loss[max(loss)] if loss else None

    def tokens_per_second_per_gpu(self) -> dict[int, float]:
        batch, seconds = self.series("batch-size"), self.series("iteration-time")
        tokens = self.plan.phase.seq_length / self.plan.world_size
        return {step: batch[step] * tokens / seconds[step]
                for step in sorted(seconds) if step in batch and seconds[step] > 0}

    def mfu(self) -> dict[int, float]:
        """Model FLOPs utilisation against the accelerator's bf16 peak (empty when it is unknown)."""
        peak = self.plan.peak_flops
        if peak is None:
            return {}
        return {step: rate * self.plan.flops_per_token / peak
                for step, rate in self.tokens_per_second_per_gpu().items()}

    @property
    def current_throughput(self) -> float | None:
        """Median tokens/s/GPU over the last logged iterations."""
        rates = list(self.tokens_per_second_per_gpu().values())[-THROUGHPUT_WINDOW:]
        return statistics.median(rates) if rates else None

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the current pace (median seconds per iteration over the last logged ones)."""
        seconds = [value for _, value in sorted(self.series("iteration-time").items())][-THROUGHPUT_WINDOW:]
        if not seconds:
            return None
        return max(self.plan.train_iters - self.steps_done, 0) * statistics.median(seconds)


def _revision(plan: RunPlan, step: int) -> str | None:
    phase = plan.phase
    if phase.published_steps:
        return phase.revision(step) if step in phase.published_steps else None
    return phase.revision(step) if step % phase.save_interval == 0 or step == plan.train_iters else None


def _checkpoints(run_dir: Path, status: PhaseStatus) -> list[Checkpoint]:
    folder = run_dir / "checkpoints"
    steps = sorted(int(m.group(1)) for p in folder.glob("iter_*") if (m := _CHECKPOINT.fullmatch(p.name)))
    logged, schedule = status.consumed_samples(), status.schedule
    checkpoints = []
    for step in steps:  # a save between two logged steps (log interval 10): its samples from the plan
        samples = logged.get(step) or schedule.consumed_samples(min(step, schedule.train_iters))
        tokens = status.token_offset + status.plan.phase.seq_length * samples
        checkpoints.append(Checkpoint(step, tokens, _revision(status.plan, step)))
    return checkpoints


def find_deviations(status: PhaseStatus) -> list[Deviation]:
    """Every logged step whose LR or global batch is not the plan's."""
    schedule, peak = status.schedule, status.plan.phase.lr.max_lr
    deviations = []
    for step, lr in sorted(status.series("learning-rate").items()):
        planned = schedule.lr(step) if step <= schedule.train_iters else None
        if planned is None or abs(lr - planned) > max(LR_REL_TOLERANCE * abs(planned), LR_ABS_TOLERANCE * peak):
            deviations.append(Deviation(status.name, step, "learning-rate", lr, planned))
    for step, batch in sorted(status.series("batch-size").items()):
        planned = schedule.global_batch_size(step) if 1 <= step <= schedule.train_iters else None
        if planned is None or batch != planned:
            deviations.append(Deviation(status.name, step, "batch-size", batch, planned))
    return sorted(deviations, key=lambda d: (d.step, d.quantity))


def run_status(run_root: Path) -> list[PhaseStatus]:
    """The phases present under ``run_root`` (``<phase>/tensorboard`` with logged scalars), in order."""
    if not run_root.is_dir():
        raise UserError(f"run folder {run_root} does not exist: give the --output-root of `lucie train`")
    phases: list[PhaseStatus] = []
    step_offset = token_offset = 0
    for name in PHASES:
        run_dir = run_root / name
        scalars = read_scalars(run_dir / "tensorboard") if (run_dir / "tensorboard").is_dir() else {}
        if not scalars.get("learning-rate") and not scalars.get("lm loss"):
            continue
        status = PhaseStatus(read_run_plan(run_dir, name), scalars, [], step_offset, token_offset)
        status.checkpoints = _checkpoints(run_dir, status)
        status.deviations = find_deviations(status)
        phases.append(status)
        step_offset += status.steps_done
        token_offset += status.tokens_done
    if not phases:
        raise UserError(f"no TensorBoard training scalars under {run_root}/{{{','.join(PHASES)}}}/tensorboard: "
                        "give the --output-root of a `lucie train` run that has logged at least one step")
    return phases
