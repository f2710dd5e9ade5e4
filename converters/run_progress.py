"""Steps and tokens of the run that made a checkpoint: its own train state plus the phases it started from.

Megatron-Bridge saves ``train_state.pt`` (``step``, ``consumed_train_samples``) in each iteration folder and
the run's config in ``run_config.yaml``: the phase's tokens are its samples times its sequence length, and a
phase started from ``checkpoint.pretrained_checkpoint`` adds that checkpoint's own cumulative numbers. A run is
described as the real Lucie-7B run only when it is Lucie-7B-sized and its numbers are the real schedule's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from converters.megatron_reader import CheckpointInfo, locate
from lucie_nemo.architecture import LUCIE_7B, LucieShape
from lucie_nemo.errors import UserError
from lucie_nemo.phases import Phase
from lucie_nemo.schedule import PhaseSchedule

TRAIN_STATE = "train_state.pt"


@dataclass(frozen=True)
class RunProgress:
    """Where the run that made a checkpoint stood: steps and tokens since the start of its first phase."""

    cumulative_step: int
    cumulative_tokens: int
    lucie_run: bool  # the real Lucie-7B schedule (else a scaled-down, demo or other run)
    source: str  # how the numbers were obtained, for the model card


def _own_progress(info: CheckpointInfo) -> tuple[int, int] | None:
    """(steps, tokens) of the checkpoint's own phase from its train state and sequence length."""
    state_file = info.weights_dir / TRAIN_STATE
    seq_length = info.model_config.get("seq_length")
    if not state_file.is_file() or not seq_length:
        return None
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    return int(state["step"]), int(state["consumed_train_samples"]) * int(seq_length)


def _started_from(info: CheckpointInfo) -> str | None:
    """The checkpoint the phase started from (``checkpoint.pretrained_checkpoint`` of its run config)."""
    import yaml

    run_config = info.weights_dir / "run_config.yaml"
    if not run_config.is_file():
        return None
    return (yaml.safe_load(run_config.read_text("utf-8")) or {}).get("checkpoint", {}).get("pretrained_checkpoint")


def _chain_progress(info: CheckpointInfo, seen: frozenset[Path] = frozenset()) -> tuple[int, int] | None:
    """Cumulative (steps, tokens) of ``info`` and the checkpoints its phases started from; None if unknown."""
    own = _own_progress(info)
    if own is None:
        return None
    previous = _started_from(info)
    if previous is None:
        return own
    if not Path(previous).is_dir():
        raise UserError(f"{info.path} started from {previous}, which is not there: its earlier steps and tokens "
                        "cannot be counted (restore that checkpoint, or export from the machine that has it)")
    earlier = locate(previous)
    if earlier.weights_dir.resolve() in seen:
        raise UserError(f"{info.path}: the checkpoints it started from form a loop at {earlier.weights_dir}")
    before = _chain_progress(earlier, seen | {info.weights_dir.resolve()})
    if before is None:  # e.g. a Hugging Face folder or an import: weights without a training history
        before = (0, 0)
    return before[0] + own[0], before[1] + own[1]


def run_progress(info: CheckpointInfo, phase: Phase, step: int, shape: LucieShape) -> RunProgress:
    """The run's own numbers when the checkpoint has a train state; the Lucie schedule's otherwise."""
    record = PhaseSchedule(phase).record(step)
    lucie_numbers = (record.cumulative_step, record.cumulative_tokens)
    chain = _chain_progress(info)
    if chain is None:
        return RunProgress(*lucie_numbers, lucie_run=shape == LUCIE_7B,
                           source="the Lucie-7B schedule at this step (the checkpoint holds no train state)")
    lucie_run = shape == LUCIE_7B and chain == lucie_numbers
    return RunProgress(*chain, lucie_run=lucie_run, source="the checkpoint's train state and the phases before it")
