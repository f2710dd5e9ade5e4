"""The GPU path: the recipe's layers on CUDA, bf16 and FP8 (tensorwise current scaling), checkpoints, `lucie train`.

Skipped without CUDA. On a GPU machine `make test` runs them. Two groups:
- without Transformer Engine (what a bare node with its own torch runs: bench/gpu_check.sh selects them with
  ``-m "not transformer_engine"``): the CPU redirects stay off, the recipe's model with megatron-core's local
  layers trains a step in bf16, and `lucie train` saves and resumes on the GPU;
- with Transformer Engine (marked ``transformer_engine``; they fail where it is not installed): the recipe's own
  config with its precision preset applied the way Megatron-Bridge applies it, the model wrapped as Bridge wraps
  it for training (DDP grad buffers: Transformer Engine accumulates weight gradients into ``main_grad``), and
  `lucie train` itself in FP8 with a resume.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_gpu

pytestmark = needs_gpu
te_only = pytest.mark.transformer_engine

VOCAB = 512


@pytest.fixture(scope="module")
def transformer_engine():
    from lucie_nemo import cpu_support

    if not cpu_support.transformer_engine_installed():
        pytest.fail("Transformer Engine is not installed: pip install 'transformer-engine[pytorch]', or run "
                    "pytest -m 'not transformer_engine' for the tests that apply without it")


@pytest.fixture(scope="module")
def gpu_world():
    """NCCL on GPU 0, world size 1, Megatron's model-parallel state; the CPU redirects stay off."""
    from lucie_nemo import cpu_support, runtime

    runtime.prepare()
    assert cpu_support.activate() is False and cpu_support.ORIGINALS == {}  # no CPU redirect on a GPU machine
    from lucie_nemo.distributed import free_port, single_process_world

    torch.cuda.set_device(0)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with single_process_world(seed=1234):
            yield
    finally:
        torch.distributed.destroy_process_group()


def _recipe(precision: str, tmp_path: Path, local_layers: bool = False):
    """The tiny pretrain recipe in ``precision``, its preset applied to model, optimizer and DDP configs as
    Megatron-Bridge does before it builds the model (training/config.py: runtime_config_update); with
    ``local_layers``, megatron-core's own layers as `lucie train` uses them where Transformer Engine is absent."""
    from megatron.bridge.training.mixed_precision import get_mixed_precision_config

    from lucie_nemo.distributed import attach_process_groups
    from lucie_nemo.model import use_local_layers
    from lucie_nemo.leg_config import build_leg_config

    cfg, _ = build_leg_config("pretrain", tiny=True, vocab_size=VOCAB, precision=precision, output_root=str(tmp_path))
    if local_layers:
        use_local_layers(cfg.model, dtype=torch.bfloat16)
    cfg.mixed_precision = get_mixed_precision_config(cfg.mixed_precision)
    cfg.mixed_precision.finalize()
    cfg.mixed_precision.setup(cfg.model, cfg.optimizer, cfg.ddp)
    attach_process_groups(cfg.model)
    cfg.model.finalize()
    return cfg


def _module_types(model: torch.nn.Module) -> set[str]:
    return {type(module).__name__ for module in model.modules()}


def _batch(seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, VOCAB, (1, seq_length), device="cuda", generator=generator)
    return tokens, torch.arange(seq_length, device="cuda").unsqueeze(0)


def _grads_are_finite_and_nonzero(wrapped: torch.nn.Module) -> None:
    """Every parameter's DDP main_grad (where Bridge's DDP and Transformer Engine accumulate) finite and non-zero."""
    grads = {name: parameter.main_grad for name, parameter in wrapped.named_parameters()}
    assert len(grads) == len(list(wrapped.parameters())) > 0
    assert [name for name, grad in grads.items() if not torch.isfinite(grad).all()] == []
    assert [name for name, grad in grads.items() if not grad.abs().sum() > 0] == []


@te_only
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_te_layers_run_a_forward_and_backward(transformer_engine, gpu_world, tmp_path, precision):
    cfg = _recipe(precision, tmp_path)
    model = cfg.model
    assert (model.bf16, model.params_dtype) == (True, torch.bfloat16)
    if precision == "fp8":  # the recipe's preset: per-tensor current scaling, first and last layer in bf16
        assert (model.fp8, model.fp8_recipe, model.first_last_layers_bf16) == ("hybrid", "tensorwise", True)
        assert (model.num_layers_at_start_in_bf16, model.num_layers_at_end_in_bf16) == (1, 1)
    else:
        assert model.fp8 is None
    wrapped = model.provide_distributed_model(ddp_config=cfg.ddp)[0]
    types = _module_types(wrapped)
    assert {"TELayerNormColumnParallelLinear", "TERowParallelLinear", "TEDotProductAttention"} <= types, types

    tokens, positions = _batch(model.seq_length)
    losses = wrapped(tokens, positions, None, labels=tokens)
    assert losses.shape == (1, model.seq_length)
    assert torch.isfinite(losses).all()
    loss = losses.float().mean()
    assert abs(loss.item() - math.log(VOCAB)) < 0.5  # near ln(vocabulary) at init (std 0.009)
    loss.backward()
    wrapped.finish_grad_sync()
    _grads_are_finite_and_nonzero(wrapped)


@te_only
def test_te_checkpoint_round_trip_is_bit_exact_and_readable_by_the_converters(transformer_engine, gpu_world, tmp_path):
    """megatron-core's torch_dist save and load of the TE model; the exporter's reader finds every layer."""
    from megatron.core import dist_checkpointing

    from converters.megatron_reader import CheckpointTensors, LayerTensors, locate

    model = _recipe("bf16", tmp_path / "run").model.provide()
    assert "TELayerNormColumnParallelLinear" in _module_types(model)
    reference = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                 if isinstance(tensor, torch.Tensor) and not name.endswith("_extra_state")}
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(folder))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(folder)))
    restored = model.state_dict()
    assert [name for name, tensor in reference.items() if not torch.equal(restored[name], tensor)] == []

    layers = LayerTensors(CheckpointTensors(locate(folder)))
    assert layers.num_layers == model.config.num_layers == 4
    assert layers.names["attn_norm"] == "self_attention.linear_qkv.layer_norm_weight"
    for index, layer in enumerate(model.decoder.layers):
        assert torch.equal(layers.read("qkv", index), reference[f"decoder.layers.{index}.self_attention.linear_qkv.weight"].cpu())
        assert torch.equal(layers.read("fc2", index), layer.mlp.linear_fc2.weight.detach().cpu())


def _train(root: Path, iterations: int, precision: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lucie_nemo.cli", "train", "pretrain", "--tiny", "--vocab-size", str(VOCAB),
               "--precision", precision, "--output-root", str(root), f"train.train_iters={iterations}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@te_only
def test_lucie_train_in_fp8_saves_and_resumes(transformer_engine, tmp_path):
    """`lucie train --precision fp8`: Megatron-Bridge's loop with the distributed optimizer and FP8 weights,
    2 steps saved, then resumed to 3 in a new process."""
    import yaml

    from lucie_nemo.demo import scalars

    _train(tmp_path, 2, "fp8")
    _train(tmp_path, 3, "fp8")
    run = tmp_path / "pretrain"
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    saved = yaml.safe_load((run / "checkpoints" / "iter_0000003" / "run_config.yaml").read_text())
    assert (saved["model"]["fp8"], saved["model"]["fp8_recipe"]) == ("hybrid", "tensorwise")
    assert saved["optimizer"]["use_distributed_optimizer"] is True
    losses, norms = scalars(run / "tensorboard", "lm loss"), scalars(run / "tensorboard", "grad-norm")
    assert sorted(losses) == sorted(norms) == [1, 2, 3]  # the third step logged by the resumed process
    assert all(math.isfinite(value) for value in losses.values())
    assert all(math.isfinite(value) and value > 0 for value in norms.values())


def test_local_layers_run_a_forward_and_backward_in_bf16(gpu_world, tmp_path):
    """The recipe's model with megatron-core's local layers (no Transformer Engine), bf16 weights on the GPU,
    wrapped in Bridge's DDP: loss near ln(vocabulary) at init, finite non-zero gradients in every parameter."""
    cfg = _recipe("bf16", tmp_path, local_layers=True)
    wrapped = cfg.model.provide_distributed_model(ddp_config=cfg.ddp)[0]
    assert {"ColumnParallelLinear", "RowParallelLinear", "DotProductAttention"} <= _module_types(wrapped)
    assert not any(name.startswith("TE") for name in _module_types(wrapped))
    assert {parameter.device.type for parameter in wrapped.parameters()} == {"cuda"}
    assert {parameter.dtype for parameter in wrapped.parameters()} == {torch.bfloat16}

    tokens, positions = _batch(cfg.model.seq_length)
    losses = wrapped(tokens, positions, None, labels=tokens)
    assert torch.isfinite(losses).all()
    loss = losses.float().mean()
    assert abs(loss.item() - math.log(VOCAB)) < 0.5
    loss.backward()
    wrapped.finish_grad_sync()
    _grads_are_finite_and_nonzero(wrapped)


def test_lucie_train_on_the_gpu_saves_and_resumes(tmp_path):
    """`lucie train` in bf16 on the GPU (Transformer Engine layers where installed, local layers otherwise):
    the run records the GPU, 2 steps saved, then resumed to 3 in a new process with finite losses."""
    from lucie_nemo import cpu_support
    from lucie_nemo.demo import scalars

    _train(tmp_path, 2, "bf16")
    _train(tmp_path, 3, "bf16")
    run = tmp_path / "pretrain"
    assert json.loads((run / "plan.json").read_text())["device"] == torch.cuda.get_device_name(0)
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    saved = (run / "checkpoints" / "iter_0000003" / "run_config.yaml").read_text()
    assert ("local_layer_spec" in saved) == (not cpu_support.transformer_engine_installed())
    losses = scalars(run / "tensorboard", "lm loss")
    assert sorted(losses) == [1, 2, 3]
    assert all(math.isfinite(value) for value in losses.values())
