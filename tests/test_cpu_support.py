"""Each CPU redirect is still needed (the upstream CUDA-only code is still there) and still hits."""

from __future__ import annotations

import importlib
import inspect
import re
import sys

import pytest
import torch

from lucie_nemo import cpu_support

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU redirects apply only without CUDA")

CUDA_ONLY = re.compile(r"torch\.cuda\.|device=[\"']cuda[\"']")


def _source(qualified: str) -> str:
    module_name, _, attribute = qualified.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attribute) if attribute else module
    return inspect.getsource(inspect.unwrap(target) if callable(target) else target)


@pytest.mark.parametrize("module_name", sorted(cpu_support.TORCH_REDIRECTED_MODULES))
def test_torch_redirected_module_still_uses_cuda(megatron_runtime, module_name):
    """If this fails, upstream no longer calls CUDA there: drop the module from the list."""
    assert CUDA_ONLY.search(_source(module_name)), f"{module_name} has no CUDA call left"


@pytest.mark.parametrize("module_name", sorted(cpu_support.TORCH_REDIRECTED_MODULES))
def test_torch_redirect_is_installed(megatron_runtime, module_name):
    assert importlib.import_module(module_name).torch is cpu_support.CPU_TORCH


@pytest.mark.parametrize("redirect", cpu_support.FUNCTION_REDIRECTS, ids=lambda r: f"{r.module}.{r.attribute}")
def test_function_redirect_still_needed_and_installed(megatron_runtime, redirect):
    module_name, _, function = redirect.marker_source.partition(":")
    upstream = cpu_support.ORIGINALS.get((module_name, function)) or getattr(importlib.import_module(module_name), function)
    source = inspect.getsource(upstream)
    assert redirect.marker in source, f"upstream {redirect.marker_source} changed: re-check this redirect"
    installed = getattr(importlib.import_module(redirect.module), redirect.attribute)
    assert installed.lucie_redirect is redirect


def test_tensor_cuda_redirect_covers_batch_moves(megatron_runtime):
    source = _source("megatron.bridge.training.gpt_step:get_batch_from_iterator")
    assert ".cuda(non_blocking=True)" in source
    tensor = torch.ones(2)
    assert tensor.cuda(non_blocking=True) is tensor


def test_cpu_torch_moves_cuda_allocations_to_cpu(megatron_runtime):
    assert cpu_support.CPU_TORCH.zeros(2, device="cuda").device.type == "cpu"
    assert cpu_support.CPU_TORCH.tensor([1], device="cuda:0").device.type == "cpu"
    assert cpu_support.CPU_TORCH.cuda.current_device() == "cpu"


def test_import_hook_keeps_transformer_engine_absent(megatron_runtime):
    import megatron.bridge  # noqa: F401
    from megatron.core.extensions import transformer_engine as mcore_te

    assert "transformer_engine" not in sys.modules
    assert mcore_te.HAVE_TE is False
    lora_layers = importlib.import_module("megatron.bridge.peft.lora_layers")
    assert isinstance(lora_layers.te, cpu_support._PlaceholderTE)


def test_lora_layers_still_imports_transformer_engine_unconditionally():
    """If this fails, Megatron-Bridge made the import optional: drop the import hook."""
    spec = importlib.util.find_spec("megatron.bridge.peft.lora_layers")
    assert "\nimport transformer_engine.pytorch as te\n" in open(spec.origin).read()


def test_cuda_type_names_stay_inside_the_distributed_optimizer_build(megatron_runtime):
    """Only DistributedOptimizer's parameter sorting sees CPU tensors as torch.cuda ones."""
    parameter = torch.nn.Parameter(torch.ones(2))
    with cpu_support._cpu_tensors_typed_as_cuda():
        assert parameter.type() == "torch.cuda.FloatTensor"
        assert parameter.type(torch.float64).dtype == torch.float64
    assert parameter.type() == "torch.FloatTensor"
    from megatron.core.optimizer import DistributedOptimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer as upstream

    assert issubclass(DistributedOptimizer, upstream)  # isinstance checks against upstream still hold
