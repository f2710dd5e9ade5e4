"""Resume across a layout change (a plan's second leg): `lucie train --layout` on gloo CPU ranks writes
fully reshardable checkpoints with megatron-core's DistributedOptimizer, and a run in another layout
loads them with the same weights and optimizer state, then takes the scheduled next step.

Per source layout: a straight run in that layout (3 steps, saved at each), then two TP1 PP1 runs that
load its step-2 checkpoint: one saves what it loaded without stepping, one takes step 3.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from lucie_nemo.demo import scalars
from lucie_nemo.demo_scale import demo_phases
from lucie_nemo.schedule import PhaseSchedule
from test_export import read_everything


@dataclass(frozen=True)
class Source:
    ranks: int
    layout: str
    rng_grid: tuple[int, int]  # (PP, TP): Bridge shards its RNG state over them


# TP2 PP2 -> TP1 PP1 reshards along both model-parallel dimensions at once. A TP2 (2 ranks) source passes
# too, but each source costs ~4 minutes of a 2-core machine: add Source(2, "TP2xPP1xCP1", (1, 2)) to try it.
SOURCES = {"tp2pp2": Source(4, "TP2xPP2xCP1", (2, 2))}
TARGET = "TP1xPP1xCP1"
SAVED, NEXT = 2, 3  # the resumed step 3 runs at the rampup's second batch (4 -> 5)
RNG_GRID = re.compile(r"^rng_state/shard_\d+\.\d+_(\d+)\.(\d+)$")
SCHEDULE = PhaseSchedule(demo_phases()["pretrain"], demo_phases())


@dataclass(frozen=True)
class Runs:
    straight: Path  # the source layout's run folder, steps 1-3
    reloaded: Path  # TP1: step 2 loaded from the source layout and saved again, no step taken
    resumed: Path  # TP1: step 2 loaded from the source layout, then step 3


def _lucie_train(root: Path, ranks: int, layout: str, *overrides: str) -> Path:
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command = [*launcher, "-m", "lucie_nemo.cli", "train", "pretrain", "--tiny", "--vocab-size", "512",
               "--layout", layout, "--output-root", str(root), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return root / "pretrain"


@pytest.fixture(scope="module", params=SOURCES)
def runs(request, tmp_path_factory) -> tuple[Source, Runs]:
    source = SOURCES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    straight = _lucie_train(root / "straight", source.ranks, source.layout,
                            f"train.train_iters={NEXT}", "checkpoint.save_interval=1")
    load_saved = [f"checkpoint.load={straight / 'checkpoints'}", f"checkpoint.ckpt_step={SAVED}"]
    # Bridge saves at the end of training when the last step is off the save interval: with nothing
    # left to train, that is the loaded state as the TP1 run holds it.
    reloaded = _lucie_train(root / "reloaded", 1, TARGET, f"train.train_iters={SAVED}",
                            "checkpoint.save_interval=1000", *load_saved)
    resumed = _lucie_train(root / "resumed", 1, TARGET, f"train.train_iters={NEXT}", *load_saved)
    return source, Runs(straight, reloaded, resumed)


def _iteration(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"iter_{step:07d}"


def _tensors_and_common_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a torch_dist checkpoint, whole (model-space keys), and its common state."""
    _, state = read_everything(checkpoint)
    (common,) = state["common_state/shard_0_1"]
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}, common


def _written_by(checkpoint: Path) -> tuple[int, tuple[int, int]]:
    """(files holding data, RNG shard grid (PP, TP)) of a torch_dist checkpoint."""
    metadata = FileSystemReader(str(checkpoint)).read_metadata()
    grids = {tuple(map(int, m.groups())) for key in metadata.state_dict_metadata if (m := RNG_GRID.match(key))}
    assert len(grids) == 1, grids
    return len({item.relative_path for item in metadata.storage_data.values()}), grids.pop()


def test_checkpoints_are_written_in_their_layouts_by_the_distributed_optimizer(runs):
    """Guards the comparisons below: a source that silently ran TP1 would make them trivial."""
    source, run = runs
    assert _written_by(_iteration(run.straight, SAVED)) == (source.ranks, source.rng_grid)
    assert _written_by(_iteration(run.reloaded, SAVED)) == (1, (1, 1))
    tensors, common = _tensors_and_common_state(_iteration(run.straight, SAVED))
    assert common["optimizer"]["param_state_sharding_type"] == "fully_reshardable"
    assert common["content_metadata"]["distrib_optim_sharding_type"] == "fully_reshardable"
    moments = [key for key in tensors if key.startswith("optimizer.state.exp_avg_sq.")]
    assert len(moments) == 9  # embedding, output layer, final norm and the 6 stacked layer tensors


def test_another_layout_loads_the_same_weights_and_optimizer_state(runs):
    _, run = runs
    saved, saved_common = _tensors_and_common_state(_iteration(run.straight, SAVED))
    loaded, loaded_common = _tensors_and_common_state(_iteration(run.reloaded, SAVED))
    assert sorted(loaded) == sorted(saved)
    for key, tensor in saved.items():  # weights, fp32 main parameters, exp_avg, exp_avg_sq
        assert torch.equal(loaded[key], tensor), key
    steps = {group["step"] for group in loaded_common["optimizer"]["optimizer"]["param_groups"]}
    assert steps == {float(SAVED)}  # re-read from every parameter's own Adam state by the TP1 save
    for field in ("iteration", "optimizer", "opt_param_scheduler"):
        assert loaded_common[field] == saved_common[field], field
    train_state = torch.load(_iteration(run.reloaded, SAVED) / "train_state.pt", weights_only=False)
    assert (int(train_state["step"]), int(train_state["consumed_train_samples"])) == (
        SAVED, SCHEDULE.consumed_samples(SAVED))


def test_the_next_step_has_the_scheduled_lr_and_batch(runs):
    _, run = runs
    tensorboard = run.resumed / "tensorboard"
    assert scalars(tensorboard, "batch-size") == {NEXT: SCHEDULE.global_batch_size(NEXT)}
    assert SCHEDULE.global_batch_size(NEXT) == 5 != SCHEDULE.global_batch_size(SAVED)
    (lr,) = scalars(tensorboard, "learning-rate").items()
    assert lr == (NEXT, pytest.approx(SCHEDULE.lr(NEXT), rel=1e-6))
    train_state = torch.load(_iteration(run.resumed, NEXT) / "train_state.pt", weights_only=False)
    assert int(train_state["consumed_train_samples"]) == SCHEDULE.consumed_samples(NEXT)


def test_the_resumed_step_matches_the_straight_run(runs):
    """Up to reduction order: TP splits the matrix products and the gradient norm differently."""
    _, run = runs
    loss = scalars(run.resumed / "tensorboard", "lm loss")[NEXT]
    assert loss == pytest.approx(scalars(run.straight / "tensorboard", "lm loss")[NEXT], rel=1e-5)
    straight, _ = _tensors_and_common_state(_iteration(run.straight, NEXT))
    resumed, _ = _tensors_and_common_state(_iteration(run.resumed, NEXT))
    before, _ = _tensors_and_common_state(_iteration(run.straight, SAVED))
    for key, want in straight.items():
        tolerance = 1e-5 * want.abs().max()
        assert (resumed[key] - want).abs().max() <= tolerance, key
        if key.startswith("optimizer.state.param."):  # the step moved them far beyond the tolerance
            assert (want - before[key]).abs().max() > 100 * tolerance, key
