"""A failed checkpoint load (Bridge's bare sys.exit() paths, a damaged checkpoint) is one error naming the
checkpoint and the cause, for a resume and for an initial checkpoint; `lucie train` exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(root: Path, iteration: int = 3) -> Path:
    """A small but well-formed torch_dist checkpoint root (tracker, iter_NNNNNNN/ with .metadata and .distcp)."""
    import torch
    import torch.distributed.checkpoint as dcp

    folder = root / f"iter_{iteration:07d}"
    dcp.save({"decoder.final_layernorm.weight": torch.ones(64)}, checkpoint_id=str(folder), no_dist=True)
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return root


def no_metadata(root: Path) -> str:
    (root / "iter_0000003" / ".metadata").unlink()
    return "has no .metadata file: the checkpoint is truncated or not torch_dist"


def short_distcp(root: Path) -> str:
    shard = next((root / "iter_0000003").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:10])
    return f"{shard} holds 10 bytes, its index needs"


def missing_iteration(root: Path) -> str:
    (root / "latest_checkpointed_iteration.txt").write_text("7")
    return "names iter_0000007, which is missing: the checkpoint is truncated"


def load_with(tmp_path: Path, which: str, checkpoint: Path):
    """CheckedCheckpointManager.load with ``checkpoint`` as the resume folder or as the initial checkpoint."""
    from megatron.bridge.training.config import CheckpointConfig

    from lucie_nemo.checkpoint_load import CheckedCheckpointManager

    if which == "resume":
        config = CheckpointConfig(load=str(checkpoint), pretrained_checkpoint=None)
    else:
        config = CheckpointConfig(load=str(tmp_path / "empty"), pretrained_checkpoint=str(checkpoint))
    ctx = SimpleNamespace(state=SimpleNamespace(cfg=SimpleNamespace(checkpoint=config)), model=[], optimizer=None,
                          opt_param_scheduler=None, strict=True, skip_load_to_model_and_opt=False,
                          pg_collection=None, module_name=None)
    return CheckedCheckpointManager(config).load(ctx)


@pytest.mark.parametrize("which", ["resume", "initial"])
@pytest.mark.parametrize("damage", [no_metadata, short_distcp, missing_iteration], ids=lambda f: f.__name__)
def test_damaged_checkpoint_is_refused_with_its_cause(megatron_runtime, tmp_path, monkeypatch, which, damage):
    from megatron.bridge.training import checkpointing

    from lucie_nemo.checkpoint_load import CheckpointLoadError

    monkeypatch.setattr(checkpointing, "load_checkpoint", lambda **_: pytest.fail("loaded a damaged checkpoint"))
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    cause = damage(checkpoint)
    with pytest.raises(CheckpointLoadError) as error:
        load_with(tmp_path, which, checkpoint)
    assert str(error.value).startswith(f"cannot load checkpoint {checkpoint}: ")
    assert cause in str(error.value) and "\n" not in str(error.value)


RNG_MESSAGE = ("Unable to load rng state from checkpoint {}. Specify load_rng=False or finetune=True to prevent "
               "attempting to load the rng state.")


@pytest.mark.parametrize("which", ["resume", "initial"])
def test_bridge_sys_exit_becomes_an_error_with_bridge_s_reason(megatron_runtime, tmp_path, monkeypatch, which):
    """Bridge's load paths print the reason, then call sys.exit() (status 0); here its load_checkpoint does the
    same as its RNG path does, since a CPU run cannot save the RNG tracker states that path needs."""
    from megatron.bridge.training import checkpointing

    from lucie_nemo.checkpoint_load import CheckpointLoadError

    checkpoint = write_checkpoint(tmp_path / "ckpt")

    def load_checkpoint(**_):
        checkpointing.print_rank_0(RNG_MESSAGE.format(checkpoint / "iter_0000003"))
        sys.exit()

    monkeypatch.setattr(checkpointing, "load_checkpoint", load_checkpoint)
    with pytest.raises(CheckpointLoadError) as error:
        load_with(tmp_path, which, checkpoint)
    assert str(error.value) == f"cannot load checkpoint {checkpoint}: " + RNG_MESSAGE.format(checkpoint / "iter_0000003")
    assert checkpointing.print_rank_0.__module__ != __name__  # Bridge's own printer is back


def test_deep_exception_becomes_one_line(megatron_runtime, tmp_path, monkeypatch):
    from megatron.bridge.training import checkpointing

    from lucie_nemo.checkpoint_load import CheckpointLoadError

    checkpoint = write_checkpoint(tmp_path / "ckpt")

    def load_checkpoint(**_):
        raise RuntimeError("CheckpointException ranks:dict_keys([0])\nTraceback (most recent call last): ...")

    monkeypatch.setattr(checkpointing, "load_checkpoint", load_checkpoint)
    with pytest.raises(CheckpointLoadError, match=r"^cannot load checkpoint .*: RuntimeError: CheckpointException "
                                                  r"ranks:dict_keys\(\[0\]\)$"):
        load_with(tmp_path, "resume", checkpoint)


@pytest.mark.parametrize("which", ["resume", "initial"])
def test_lucie_train_exits_non_zero_on_a_damaged_checkpoint(tmp_path, which):
    checkpoint = write_checkpoint(tmp_path / "runs" / ("pretrain" if which == "resume" else "given") / "checkpoints")
    no_metadata(checkpoint)
    phase, options = ("pretrain", []) if which == "resume" else ("extension", ["--initial-checkpoint", str(checkpoint)])
    command = [sys.executable, "-m", "lucie_nemo.cli", "train", phase, "--tiny", "--output-root", str(tmp_path / "runs"),
               *options, "train.train_iters=1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot load checkpoint {checkpoint}: {checkpoint / 'iter_0000003'} has no .metadata file: "
                      "the checkpoint is truncated or not torch_dist"]
    assert "Traceback" not in result.stderr


def test_a_start_that_is_no_checkpoint_is_refused_where_bridge_would_start_from_random_weights(megatron_runtime,
                                                                                              tmp_path):
    """Megatron-Bridge loads ``pretrained_checkpoint`` only when it looks like a checkpoint, and silently trains
    from random weights otherwise (an empty folder, a run folder instead of its checkpoints/)."""
    from megatron.bridge.training.config import CheckpointConfig

    from lucie_nemo.checkpoint_load import require_initial_checkpoint
    from lucie_nemo.errors import UserError

    def start(path: Path) -> None:
        own = tmp_path / "runs" / "extension" / "checkpoints"
        require_initial_checkpoint(CheckpointConfig(load=str(own), pretrained_checkpoint=str(path)), "extension")

    run = tmp_path / "runs" / "pretrain"
    root = write_checkpoint(run / "checkpoints")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    for good in (root, root / "iter_0000003", hf):
        start(good)
    with pytest.raises(UserError, match=rf"^phase extension starts from {run}, which is not a checkpoint \(a run "
                                        rf"folder\? {root} is a checkpoint\): Megatron-Bridge would ignore it"):
        start(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"which is not a checkpoint: Megatron-Bridge would ignore it and start from "
                                        r"random weights. Give a checkpoints folder"):
        start(tmp_path / "empty")
    with pytest.raises(UserError, match=r"starts from the checkpoint .*/missing, which does not exist: train the phase"):
        start(tmp_path / "missing")
