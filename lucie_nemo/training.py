"""Megatron-Bridge's config container, taught to keep a sample-based LR schedule with batch rampup.

Why a subclass: the original run was sample-based with a batch-size rampup. Megatron-Bridge
refuses rampup with ``train_samples`` and, with ``train_iters``, converts warmup and decay to
samples by multiplying by the *final* global batch (ConfigContainer._calculate_scheduler_steps),
which shifts the whole LR curve. Its training loop itself is sample-exact (the scheduler advances
by each iteration's real batch), so keeping Megatron's sample counts in the scheduler is enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.bridge.training.config import ConfigContainer


@dataclass
class SampleSchedule:
    """LR warmup/decay lengths and the weight-decay horizon, in samples."""

    warmup_samples: int
    decay_samples: int
    train_samples: int


@dataclass(kw_only=True)
class SampleScheduledConfigContainer(ConfigContainer):
    """A ConfigContainer whose scheduler counts warmup and decay in samples while training
    is iteration-based (so that batch rampup is allowed)."""

    sample_schedule: SampleSchedule | None = None

    def _calculate_scheduler_steps(self) -> None:
        super()._calculate_scheduler_steps()
        if self.sample_schedule is None:
            return
        self.scheduler.lr_warmup_steps = self.sample_schedule.warmup_samples
        self.scheduler.lr_decay_steps = self.sample_schedule.decay_samples
        self.scheduler.wd_incr_steps = self.sample_schedule.train_samples


def keep_batch_rampup() -> None:
    """megatron-core 0.19 ignores ``rampup_batch_size`` (deprecated for ``step_batch_size_schedule``)
    and Megatron-Bridge 0.6.2 passes only the former to init_num_microbatches_calculator, so a
    rampup would silently train at the final batch from step 1. Translate the rampup into the
    equivalent step schedule (exact thresholds, lucie_nemo.schedule.rampup_thresholds)."""
    import megatron.bridge.training.initialize as initialize

    from lucie_nemo.schedule import rampup_thresholds

    original = initialize.init_num_microbatches_calculator
    if getattr(original, "keeps_rampup", False):
        return

    def init_num_microbatches_calculator(rank, rampup_batch_size, global_batch_size, micro_batch_size,
                                         data_parallel_size, decrease_batch_size_if_needed=False, **kwargs):
        if rampup_batch_size:
            start, increment, samples = (int(value) for value in rampup_batch_size)
            steps = rampup_thresholds(start, increment, samples, global_batch_size)
            kwargs["step_batch_size_schedule"] = " ".join(f"{consumed}:{batch}" for consumed, batch in steps)
        return original(rank, None, global_batch_size, micro_batch_size, data_parallel_size,
                        decrease_batch_size_if_needed, **kwargs)

    init_num_microbatches_calculator.keeps_rampup = True
    initialize.init_num_microbatches_calculator = init_num_microbatches_calculator
