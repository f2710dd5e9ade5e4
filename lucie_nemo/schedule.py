"""Megatron's sample accounting for a phase: batch, consumed samples, tokens, LR, revisions.

The original run was sample-based with a batch-size rampup. These functions
reproduce Megatron's arithmetic exactly (``RampupBatchsizeNumMicroBatchesCalculator``,
``update_train_iters`` and ``OptimizerParamScheduler.get_lr``); the recipes hand
the same numbers to the trainer, and the tests check both against megatron-core.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

from lucie_nemo.errors import UserError
from lucie_nemo.phases import PHASES, LRSchedule, Phase, previous_phases


def lr_at(schedule: LRSchedule, consumed_samples: int) -> float:
    """The LR Megatron's scheduler sets once ``consumed_samples`` samples have been seen."""
    if schedule.warmup_samples > 0 and consumed_samples <= schedule.warmup_samples:
        return schedule.max_lr * consumed_samples / schedule.warmup_samples
    if schedule.style == "constant":
        return schedule.max_lr
    if consumed_samples > schedule.decay_samples:
        return schedule.min_lr
    ratio = (consumed_samples - schedule.warmup_samples) / (schedule.decay_samples - schedule.warmup_samples)
    delta = schedule.max_lr - schedule.min_lr
    coefficient = 0.5 * (math.cos(math.pi * ratio) + 1.0) if schedule.style == "cosine" else 1.0 - ratio
    return schedule.min_lr + coefficient * delta


@dataclass(frozen=True)
class StepRecord:
    """What Megatron logs after one optimizer step of a phase."""

    phase: str
    step: int
    cumulative_step: int
    global_batch_size: int
    consumed_samples: int
    tokens: int
    cumulative_tokens: int
    lr: float


def rampup_thresholds(start: int, increment: int, samples: int, final: int) -> list[tuple[int, int]]:
    """Megatron's batch rampup as (first consumed-samples count, global batch) pairs.

    Exactly ``RampupBatchsizeNumMicroBatchesCalculator``: the batch is
    ``start + increment * int(consumed / (samples / n_increments))`` with that float division.
    """
    per_increment = samples / ((final - start) // increment)
    thresholds = [(0, start)]
    for k in range(1, (final - start) // increment + 1):
        consumed = max(math.ceil(k * per_increment) - 2, thresholds[-1][0] + 1)
        while int(consumed / per_increment) < k:
            consumed += 1
        thresholds.append((consumed, start + k * increment))
    return thresholds


class PhaseSchedule:
    """Step-by-step accounting of one phase, in Megatron's semantics."""

    def __init__(self, phase: Phase, phases: dict[str, Phase] = PHASES):
        self.phase = phase
        self._earlier = [PhaseSchedule(p, phases) for p in previous_phases(phase, phases)]

    def batch_size_for(self, consumed_samples: int) -> int:
        """Global batch of the next iteration, given the samples consumed so far."""
        rampup, final = self.phase.rampup, self.phase.global_batch_size
        if rampup is None or consumed_samples > rampup.samples:
            return final
        per_increment = rampup.samples / ((final - rampup.start) // rampup.increment)
        return rampup.start + int(consumed_samples / per_increment) * rampup.increment

    @cached_property
    def _rampup_consumed(self) -> list[int]:
        """Consumed samples after each rampup iteration (Megatron's update_train_iters loop)."""
        consumed, after = 0, []
        rampup = self.phase.rampup
        if rampup is None:
            return after
        while consumed <= rampup.samples and consumed <= self.phase.train_samples:
            consumed += self.batch_size_for(consumed)
            after.append(consumed)
        return after

    @cached_property
    def train_iters(self) -> int:
        ramp = self._rampup_consumed
        consumed = ramp[-1] if ramp else 0
        return len(ramp) + (self.phase.train_samples - consumed) // self.phase.global_batch_size

    @property
    def rampup_iters(self) -> int:
        """Iterations that run with a batch below the final global batch (plus the crossing one)."""
        return len(self._rampup_consumed)

    def _check_step(self, step: int) -> None:
        if not 0 <= step <= self.train_iters:
            raise UserError(f"step {step} is outside phase {self.phase.name!r} (0..{self.train_iters})")

    def consumed_samples(self, step: int) -> int:
        """Samples consumed after ``step`` iterations."""
        self._check_step(step)
        ramp = self._rampup_consumed
        if step <= len(ramp):
            return ramp[step - 1] if step else 0
        return ramp[-1] + (step - len(ramp)) * self.phase.global_batch_size if ramp else step * self.phase.global_batch_size

    def global_batch_size(self, step: int) -> int:
        """Global batch of iteration ``step`` (1-based)."""
        if step < 1:
            raise UserError("steps are counted from 1")
        return self.consumed_samples(step) - self.consumed_samples(step - 1)

    def step_for_consumed(self, consumed_samples: int) -> int:
        """The first step after which at least ``consumed_samples`` samples have been consumed."""
        ramp = self._rampup_consumed
        if ramp and consumed_samples <= ramp[-1]:
            return bisect.bisect_left(ramp, consumed_samples) + 1 if consumed_samples else 0
        base_step, base = (len(ramp), ramp[-1]) if ramp else (0, 0)
        return base_step + -(-(consumed_samples - base) // self.phase.global_batch_size)

    def lr(self, step: int) -> float:
        """LR in force after ``step`` (the value Megatron logs at that step)."""
        return lr_at(self.phase.lr, self.consumed_samples(step))

    @cached_property
    def step_offset(self) -> int:
        """Steps of the earlier phases."""
        return sum(s.train_iters for s in self._earlier)

    @cached_property
    def token_offset(self) -> int:
        """Tokens of the earlier phases."""
        return sum(s.tokens(s.train_iters) for s in self._earlier)

    def tokens(self, step: int) -> int:
        return self.consumed_samples(step) * self.phase.seq_length

    def record(self, step: int) -> StepRecord:
        tokens = self.tokens(step)
        return StepRecord(
            phase=self.phase.name,
            step=step,
            cumulative_step=self.step_offset + step,
            global_batch_size=self.global_batch_size(step) if step else self.batch_size_for(0),
            consumed_samples=self.consumed_samples(step),
            tokens=tokens,
            cumulative_tokens=self.token_offset + tokens,
            lr=self.lr(step),
        )

    def save_steps(self) -> list[int]:
        """Steps at which the recipe saves: every ``save_interval`` and the last step."""
        steps = list(range(self.phase.save_interval, self.train_iters + 1, self.phase.save_interval))
        if not steps or steps[-1] != self.train_iters:
            steps.append(self.train_iters)
        return steps

    def revision_steps(self) -> list[int]:
        """Published steps of this phase, or every saved step for a phase published only as `main`."""
        return list(self.phase.published_steps) or self.save_steps()
