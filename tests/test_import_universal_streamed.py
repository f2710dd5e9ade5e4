"""`lucie import` of a universal checkpoint writes, one tensor at a time, exactly the checkpoint Megatron-Bridge
writes when it holds the whole model and distributed optimizer (the reference below, built the direct way)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from lucie_nemo.architecture import TINY, LucieShape
from lucie_nemo.demo_scale import demo_phase
from lucie_nemo.phases import PRETRAIN
from lucie_nemo.schedule import PhaseSchedule
from test_export import read_everything
from universal_fixture import watched_universal_reads, write_universal

ITERATION = 3  # of the scaled-down phase 1 (lucie train --tiny)
SHAPE = LucieShape(**{**asdict(TINY), "vocab_size": 65_024})
PHASE = demo_phase(PRETRAIN)


def bridge_reference(universal: Path, out: Path) -> None:
    """The checkpoint the direct way: Bridge builds the model, DistributedOptimizer and scheduler at the real
    widths, every parameter's fp32 value, exp_avg, exp_avg_sq and step are set through megatron-core's
    per-parameter API, and Bridge's save_checkpoint writes it (what `lucie import` did before it streamed)."""
    import contextlib
    import io

    import megatron.bridge.training.checkpointing as checkpointing
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.optim import setup_optimizer
    from megatron.bridge.training.state import GlobalState
    from megatron.core.utils import unwrap_model

    from converters.universal.checkpoint import UniversalCheckpoint
    from converters.universal.import_state import _import_config
    from lucie_nemo.distributed import single_process_world

    checkpoint = UniversalCheckpoint(universal)
    consumed = PhaseSchedule(PHASE).consumed_samples(ITERATION)
    with contextlib.redirect_stdout(io.StringIO()), single_process_world():
        cfg = _import_config(PHASE, SHAPE, True, out)
        runtime_config_update(cfg)
        model = cfg.model.provide_distributed_model(ddp_config=cfg.ddp, overlap_param_gather_with_optimizer_step=False)
        optimizer, scheduler = setup_optimizer(cfg.optimizer, cfg.scheduler, model, use_gloo_process_groups=True)
        parts = getattr(optimizer, "chained_optimizers", [optimizer])
        for part in parts:
            part._init_optimizer_states_with_dummy_values()
        owner = {p: part for part in parts for p in part.model_param_group_index_map}
        parameters = dict(unwrap_model(model)[0].named_parameters())
        for name, source, layer in checkpoint.megatron_names():
            states = {key: checkpoint.megatron(source, layer, state).reshape(-1)
                      for key, state in (("param", "fp32"), ("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"))}
            with torch.no_grad():
                parameters[name].copy_(states["param"].view(parameters[name].shape))
            owner[parameters[name]]._set_main_param_and_optimizer_states(
                parameters[name], {**states, "step": torch.tensor(float(ITERATION))})
        scheduler.step(increment=consumed)
        state = GlobalState()
        state.cfg = cfg
        state.train_state.step, state.train_state.consumed_train_samples = ITERATION, consumed
        checkpointing.save_checkpoint(state, model, optimizer, scheduler, 0,
                                      checkpointing_context=checkpointing.init_checkpointing_context(cfg.checkpoint))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(universal folder, the streamed import, the reference, what the import read and held)."""
    from typer.testing import CliRunner

    from test_import_universal import _app

    root = tmp_path_factory.mktemp("streamed")
    universal = write_universal(root / "global_step3", SHAPE, ITERATION, phase=PHASE)
    with watched_universal_reads() as watched:
        result = CliRunner().invoke(_app(), ["import", str(universal), str(root / "imported"), "--tiny", "--no-progress"])
    assert result.exit_code == 0, result.output
    bridge_reference(universal, root / "reference")
    return universal, root / "imported", root / "reference", watched.reads, watched.most_alive


def test_the_streamed_import_is_bridges_checkpoint_bit_for_bit(imported):
    _, streamed, reference, _, _ = imported
    iteration = f"iter_{ITERATION:07d}"
    written, tensors = read_everything(streamed / iteration)
    expected, reference_tensors = read_everything(reference / iteration)
    assert sorted(tensors) == sorted(reference_tensors)
    assert any(key.startswith("optimizer.state.exp_avg_sq.") for key in tensors)
    for key, value in reference_tensors.items():
        if isinstance(value, torch.Tensor):  # weights (bf16), fp32 main parameters, exp_avg, exp_avg_sq
            assert value.dtype == tensors[key].dtype and torch.equal(value, tensors[key]), key
            chunks = lambda item: sorted((tuple(c.offsets), tuple(c.sizes)) for c in item.chunks)  # noqa: E731
            assert chunks(written[key]) == chunks(expected[key]), key
        else:  # the common state (iteration, optimizer param groups and step, scheduler), layers' extra state
            assert tensors[key] == value, key
    for name in ("train_state.pt", "metadata.json"):
        assert (streamed / iteration / name).read_bytes() == (reference / iteration / name).read_bytes(), name
    for name in ("latest_train_state.pt", "latest_checkpointed_iteration.txt"):
        assert (streamed / name).read_bytes() == (reference / name).read_bytes(), name
    configs = [yaml.safe_load((folder / iteration / "run_config.yaml").read_text()) for folder in (streamed, reference)]
    for config in configs:
        config["checkpoint"].pop("save")  # the staging folder each was written in
    assert configs[0] == configs[1]
    assert configs[0]["model"]["hidden_size"] == SHAPE.hidden_size  # the real widths, not the template's


def test_each_universal_tensor_is_read_once_and_held_alone(imported):
    from converters.universal.checkpoint import STATES, UniversalCheckpoint

    universal, _, _, reads, most_alive = imported
    names = UniversalCheckpoint(universal).names
    assert sorted(reads) == sorted((name, state) for name in names for state in STATES)
    assert most_alive <= 2  # a layer's query and key_value, re-packed into its QKV
