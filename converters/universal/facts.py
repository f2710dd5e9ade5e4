"""Cross-check a universal checkpoint's run (Megatron args, iteration, samples, LR scheduler) against a phase.

A disagreement means the checkpoint is not from the phase's run as this project declares it (or the phase's
facts are wrong): either way continuing it would not continue that run, so it is an error naming both values.
"""

from __future__ import annotations

import math
from typing import Any

from converters.universal.checkpoint import MODEL_STATES, UniversalCheckpoint
from lucie_nemo.errors import UserError
from lucie_nemo.phases import Phase
from lucie_nemo.schedule import PhaseSchedule


def _rampup(phase: Phase) -> list[int] | None:
    return [phase.rampup.start, phase.rampup.increment, phase.rampup.samples] if phase.rampup else None


def expected_args(phase: Phase) -> dict[str, Any]:
    """Megatron-DeepSpeed args of ``phase``'s run: context, RoPE, batch, rampup, LR schedule (in samples), AdamW."""
    lr, optimizer = phase.lr, phase.optimizer
    return {
        "seq_length": phase.seq_length, "rope_theta": phase.rotary_base, "train_samples": phase.train_samples,
        "global_batch_size": phase.global_batch_size, "rampup_batch_size": _rampup(phase),
        "lr": lr.max_lr, "min_lr": lr.min_lr, "lr_decay_style": lr.style, "lr_warmup_samples": lr.warmup_samples,
        "lr_decay_samples": lr.decay_samples, "weight_decay": optimizer.weight_decay, "clip_grad": optimizer.clip_grad,
        "adam_beta1": optimizer.adam_beta1, "adam_beta2": optimizer.adam_beta2, "adam_eps": optimizer.adam_eps,
    }


def expected_scheduler(phase: Phase, consumed_samples: int) -> dict[str, Any]:
    """Megatron's OptimizerParamScheduler.state_dict() fields of ``phase`` after ``consumed_samples``."""
    lr = phase.lr
    return {"max_lr": lr.max_lr, "min_lr": lr.min_lr, "lr_decay_style": lr.style, "lr_warmup_steps": lr.warmup_samples,
            "lr_decay_steps": lr.decay_samples, "num_steps": consumed_samples}


def _same(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) or isinstance(found, float):
        return found is not None and math.isclose(float(found), float(wanted), rel_tol=1e-9)
    if isinstance(wanted, list):
        return found is not None and [int(value) for value in found] == wanted
    return found == wanted


def check_run_facts(checkpoint: UniversalCheckpoint, phase: Phase) -> None:
    """Refuse a checkpoint whose args, iteration, consumed samples / tokens or LR scheduler disagree with ``phase``."""
    source = checkpoint.folder / MODEL_STATES
    args = checkpoint.info.args
    for field, wanted in expected_args(phase).items():
        found = getattr(args, field, None)
        if field == "lr_decay_samples" and found is None:
            found = args.train_samples  # Megatron's default: decay over the whole run
        if not _same(found, wanted):
            raise UserError(f"{source}: args.{field} is {found!r}, phase {phase.name!r} has {wanted!r}")
    schedule = PhaseSchedule(phase)
    iteration = checkpoint.info.iteration
    if not 0 < iteration <= schedule.train_iters:
        raise UserError(f"{source}: iteration {iteration} is outside phase {phase.name!r} (1..{schedule.train_iters})")
    consumed = schedule.consumed_samples(iteration)
    counts = {"args.consumed_train_samples": (getattr(args, "consumed_train_samples", None), consumed),
              "tokens": (checkpoint.info.tokens, schedule.tokens(iteration))}
    for field, (found, wanted) in counts.items():
        if found is not None and found != wanted:
            raise UserError(f"{source}: {field} is {found}, phase {phase.name!r} has {wanted} after iteration {iteration}")
    for field, wanted in expected_scheduler(phase, consumed).items():
        found = checkpoint.info.lr_scheduler.get(field)
        if not _same(found, wanted):
            raise UserError(f"{source}: lr_scheduler {field} is {found!r}, phase {phase.name!r} has {wanted!r} "
                            f"after iteration {iteration}")
