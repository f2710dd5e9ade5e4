"""An export describes the run that made the checkpoint: its train state and the phases it started from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lucie_nemo.architecture import LUCIE_7B, TINY
from lucie_nemo.phases import EXTENSION, PRETRAIN
from lucie_nemo.schedule import PhaseSchedule


def fake_checkpoint(root: Path, step: int, samples: int, seq_length: int, started_from: Path | None = None) -> Path:
    """A checkpoint root with what run_progress reads: tracker, train_state.pt, run_config.yaml (no tensors)."""
    folder = root / f"iter_{step:07d}"
    folder.mkdir(parents=True)
    torch.save({"step": torch.tensor(step), "consumed_train_samples": torch.tensor(samples)}, folder / "train_state.pt")
    run_config = {"model": {"seq_length": seq_length},
                  "checkpoint": {"pretrained_checkpoint": None if started_from is None else str(started_from)}}
    (folder / "run_config.yaml").write_text(yaml.safe_dump(run_config))
    (root / "latest_checkpointed_iteration.txt").write_text(str(step))
    return root


def progress(root: Path, phase, step: int, shape):
    from converters.megatron_reader import locate
    from converters.run_progress import run_progress

    return run_progress(locate(root), phase, step, shape)


def test_demo_chain_counts_its_own_steps_and_tokens(megatron_runtime, tmp_path):
    pretrain = fake_checkpoint(tmp_path / "pretrain", step=322, samples=5_078, seq_length=256)
    extension = fake_checkpoint(tmp_path / "extension", step=31, samples=62, seq_length=2_000, started_from=pretrain)
    result = progress(extension, EXTENSION, 31, TINY)
    assert (result.cumulative_step, result.cumulative_tokens) == (322 + 31, 5_078 * 256 + 62 * 2_000)
    assert not result.lucie_run


def test_real_lucie_chain_gives_the_lucie_numbers(megatron_runtime, tmp_path):
    last = PhaseSchedule(PRETRAIN).record(753_851)
    pretrain = fake_checkpoint(tmp_path / "pretrain", 753_851, last.consumed_samples, 4_096)
    at_250 = PhaseSchedule(EXTENSION).record(250)
    extension = fake_checkpoint(tmp_path / "extension", 250, at_250.consumed_samples, 32_000, started_from=pretrain)
    result = progress(extension, EXTENSION, 250, LUCIE_7B)
    assert (result.cumulative_step, result.cumulative_tokens) == (at_250.cumulative_step, at_250.cumulative_tokens)
    assert result.lucie_run
    assert not progress(extension, EXTENSION, 250, TINY).lucie_run  # the same numbers on another model


def test_missing_start_checkpoint_is_a_clear_error(megatron_runtime, tmp_path):
    from lucie_nemo.errors import UserError

    extension = fake_checkpoint(tmp_path / "extension", 31, 62, 2_000, started_from=tmp_path / "gone")
    with pytest.raises(UserError, match="started from .*gone, which is not there"):
        progress(extension, EXTENSION, 31, TINY)


def test_model_card_says_which_run(megatron_runtime):
    from converters.model_card import model_card
    from converters.run_progress import RunProgress

    demo = model_card(EXTENSION, 31, TINY, RunProgress(353, 1_424_000, lucie_run=False, source="its train state"))
    assert "**Not Lucie-7B**" in demo and "353 steps and 1,424,000 tokens" in demo
    real = model_card(EXTENSION, 250, LUCIE_7B, RunProgress(754_101, 1, lucie_run=True, source="its train state"))
    assert "A checkpoint of the Lucie-7B training run." in real and "Not Lucie-7B" not in real
