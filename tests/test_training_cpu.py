"""Megatron-Bridge's own training loop follows Lucie's schedule (tiny model, CPU or GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lucie_nemo.demo import scalars
from lucie_nemo.demo_scale import LR_MULTIPLIER, demo_phases
from lucie_nemo.schedule import PhaseSchedule

PHASES = demo_phases()


def _train(phase: str, root: Path, iterations: int, *overrides: str) -> str:
    """Train ``phase`` for ``iterations`` steps; its output."""
    command = [sys.executable, "-m", "lucie_nemo.cli", "train", phase, "--tiny", "--vocab-size", "512",
               "--output-root", str(root), f"train.train_iters={iterations}", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    # Megatron-Bridge exits 0 on some load failures, so also check that the last step was saved.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _latest_iteration(root / phase) == iterations, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    return scalars(run_dir / "tensorboard", tag)


def _latest_iteration(run_dir: Path) -> int:
    return int((run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())


def _tensors(checkpoint: Path, model_only: bool = False) -> dict:
    """Every tensor of a torch_dist checkpoint (a root: its latest iteration; or an iter_NNNNNNN folder) by name:
    the model's, and with ``model_only=False`` the optimizer's (Adam's two moments per parameter)."""
    from converters.megatron_reader import CheckpointTensors, locate

    tensors = CheckpointTensors(locate(checkpoint))
    assert tensors.prefix == ""  # Megatron-Bridge names: the model's tensors and "optimizer.state...." side by side
    names = tensors.model_keys() if model_only else list(tensors.tensors)
    return {name: tensors.read(name) for name in names}


@dataclass(frozen=True)
class Runs:
    root: Path  # pretrain: 8 steps, then resumed to 10; extension: 3 steps from pretrain's weights, each saved
    first_rates: dict[int, float]  # the learning rates the first 8 steps logged
    straight: Path  # pretrain: 10 steps in one process
    extension_output: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root, straight = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("straight")
    _train("pretrain", root, 8)
    first = _scalars(root / "pretrain", "learning-rate")
    _train("pretrain", root, 10)
    extension = _train("extension", root, 3, "checkpoint.save_interval=1")
    _train("pretrain", straight, 10)
    return Runs(root, first, straight, extension)


def test_batch_rampup_and_lr_follow_the_sample_schedule(runs):
    plan = PhaseSchedule(PHASES["pretrain"], PHASES)
    batches = _scalars(runs.root / "pretrain", "batch-size")
    rates = _scalars(runs.root / "pretrain", "learning-rate")
    assert [batches[step] for step in range(1, 11)] == [plan.global_batch_size(step) for step in range(1, 11)]
    assert batches[1] == 4 and batches[10] == 16  # rampup 4 -> 16 (Lucie's 256 -> 1,024 / 64)
    for step in range(1, 11):
        assert rates[step] == pytest.approx(plan.lr(step), rel=1e-6), step


def test_resume_restores_iteration_and_consumed_samples(runs):
    import torch

    assert sorted(runs.first_rates) == list(range(1, 9))
    run = runs.root / "pretrain"
    assert _latest_iteration(run) == 10
    state = torch.load(run / "checkpoints" / "iter_0000010" / "train_state.pt", weights_only=False)
    plan = PhaseSchedule(PHASES["pretrain"], PHASES)
    assert state["consumed_train_samples"] == plan.consumed_samples(10)


def test_a_resumed_run_is_bit_identical_to_a_straight_run(runs):
    """8 steps then a resume to 10, against 10 steps in one go: the same loss and gradient norm at every step
    (same data in the same order, same Adam state), the same weights and Adam moments at the end, bit for bit."""
    import torch

    resumed, straight = runs.root / "pretrain", runs.straight / "pretrain"
    assert len(list((resumed / "tensorboard").glob("events.out.tfevents.*"))) == 2  # two processes: a real resume
    for tag in ("lm loss", "grad-norm"):
        logged = _scalars(resumed, tag)
        assert sorted(logged) == list(range(1, 11)), tag
        assert logged == _scalars(straight, tag), tag
    resumed_tensors, straight_tensors = _tensors(resumed / "checkpoints"), _tensors(straight / "checkpoints")
    assert sorted(resumed_tensors) == sorted(straight_tensors)
    assert sum(name.startswith("optimizer.state.exp_avg.") for name in resumed_tensors) == 9  # Adam's moments compared
    differing = [name for name in resumed_tensors if not torch.equal(resumed_tensors[name], straight_tensors[name])]
    assert differing == []


def test_a_run_that_ends_on_a_save_interval_saves_its_last_iteration_once(runs):
    """The extension's 3 steps, each a save interval: the last one's interval save is also its final save."""
    saved = re.findall(r"saving checkpoint at iteration\s+(\d+)", runs.extension_output)
    assert sorted(map(int, saved)) == [1, 2, 3], runs.extension_output[-3000:]


def test_next_phase_starts_from_weights_only(runs):
    run = runs.root / "extension"
    assert _latest_iteration(run) == 3
    rates = _scalars(run, "learning-rate")
    assert sorted(rates) == [1, 2, 3]  # a fresh iteration count, not phase 1's
    # the constant LR of phase 2: Lucie's 2e-5, times the demo scale's LR multiplier
    assert all(rate == pytest.approx(2e-5 * LR_MULTIPLIER) for rate in rates.values())
    assert _scalars(run, "batch-size")[1] == PHASES["extension"].global_batch_size


def test_next_phase_first_step_is_one_adam_step_from_the_previous_phases_last_weights(runs):
    """Adam's first step moves each weight by lr * g / (|g| + eps), at most the LR, plus the decoupled weight
    decay lr * wd * |w|; every tensor of phase 2's step 1 lies within that of phase 1's last checkpoint. A fresh
    init (std 0.009, norms at 1.0) or any other start lies over ten times farther."""
    from lucie_nemo.model import LucieModelProvider

    extension = PHASES["extension"]
    lr, weight_decay = extension.lr.max_lr, extension.optimizer.weight_decay
    assert lr == pytest.approx(2e-5 * LR_MULTIPLIER)
    assert lr * (1 + weight_decay) < LucieModelProvider.init_method_std / 10  # the bound tells the two apart
    last = _tensors(runs.root / "pretrain" / "checkpoints", model_only=True)  # iteration 10: phase 1's last
    first_step = _tensors(runs.root / "extension" / "checkpoints" / "iter_0000001", model_only=True)
    assert sorted(first_step) == sorted(last)
    for name, before in last.items():
        moved = (first_step[name] - before).abs().max().item()
        bound = lr * (1 + weight_decay * before.abs().max().item()) * 1.001
        assert 0.9 * lr <= moved <= bound, (name, moved / lr)


def test_the_timed_stop_saves_and_exits_on_a_cpu(tmp_path):
    """train.exit_duration_in_mins (what the Slurm profiles set) on a CPU: Megatron-Bridge's exit check builds its
    flag on device="cuda", redirected here; the run stops after its first step with a checkpoint of it."""
    command = [sys.executable, "-m", "lucie_nemo.cli", "train", "pretrain", "--tiny", "--vocab-size", "512",
               "--output-root", str(tmp_path), "train.train_iters=20", "train.exit_duration_in_mins=1e-6"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "exiting program after" in result.stdout + result.stderr
    assert _latest_iteration(tmp_path / "pretrain") == 1
