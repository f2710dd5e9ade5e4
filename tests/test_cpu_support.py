"""Each CPU redirect is still needed (the upstream CUDA-only code is still there) and still hits."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys

import pytest
import torch
from conftest import distributed_model_and_optimizer

from lucie_nemo import cpu_support

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU redirects apply only without CUDA")

# One upstream call-site per redirected module: (function or Class.method, the CUDA use in its code).
CUDA_CALL_SITES: dict[str, tuple[str, str]] = {
    "megatron.bridge.training.setup": ("setup", 'device="cuda"'),
    "megatron.bridge.training.checkpointing": ("get_rng_state", "torch.cuda.get_rng_state"),
    "megatron.bridge.training.utils.train_utils": ("training_log", 'device="cuda"'),
    "megatron.bridge.training.train": ("checkpoint_and_decide_exit", 'device="cuda"'),
    "megatron.bridge.data.loaders": ("build_train_valid_test_data_loaders", 'device="cuda"'),
    "megatron.core.timers": ("Timer.start", "torch.cuda.synchronize"),
    "megatron.training.models.dist_utils": ("_ddp_wrap", "torch.cuda.Stream"),
    "megatron.core.distributed.param_and_grad_buffer": ("_ParamAndGradBucketGroup.start_grad_sync",
                                                        "torch.cuda.current_stream"),
    "megatron.core.optimizer.optimizer": ("MixedPrecisionOptimizer.__init__", 'device="cuda"'),
    "megatron.core.optimizer.distrib_optimizer": ("DistributedOptimizer.get_parameter_state_dp_zero",
                                                   "torch.cuda.current_device"),
    "megatron.core.optimizer.clip_grads": ("get_grad_norm_fp32", 'device="cuda"'),
    "megatron.core.pipeline_parallel.schedules": ("forward_backward_no_pipelining", 'device="cuda"'),
    "megatron.core.pipeline_parallel.p2p_communication": ("P2PCommunicator._communicate", "torch.cuda.current_device"),
    "megatron.core.models.common.embeddings.rotary_pos_embedding": ("RotaryEmbedding.get_emb",
                                                                    "torch.cuda.current_device"),
    "megatron.core.utils": ("GlobalMemoryBuffer.get_tensor", "torch.cuda.current_device"),
    "megatron.core.transformer.utils": ("get_default_causal_mask", 'device="cuda"'),
    "megatron.core.dist_checkpointing.strategies.filesystem_async": ("FileSystemWriterAsync.preload_tensors",
                                                                     "torch.cuda.synchronize"),
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": ("verify_global_md_reuse", 'device="cuda"'),
}


def _source(qualified: str) -> str:
    module_name, _, attribute = qualified.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attribute) if attribute else module
    return inspect.getsource(inspect.unwrap(target) if callable(target) else target)


def cuda_uses(source: str, qualname: str) -> set[str]:
    """The CUDA uses in the code (not docstrings or comments) of function ``qualname`` of a module's ``source``:
    ``torch.cuda.X`` attributes and ``device="cuda"`` arguments."""
    scope: ast.AST = ast.parse(source)
    for name in qualname.split("."):
        scope = next(node for node in ast.iter_child_nodes(scope)
                     if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name)
    uses = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.Attribute) and re.fullmatch(r"torch\.cuda\.\w+", ast.unparse(node)):
            uses.add(ast.unparse(node))
        if isinstance(node, ast.keyword) and node.arg == "device" and ast.unparse(node.value) == "'cuda'":
            uses.add('device="cuda"')
    return uses


def test_every_redirected_module_has_a_pinned_call_site():
    assert set(CUDA_CALL_SITES) == set(cpu_support.TORCH_REDIRECTED_MODULES)


def test_pin_ignores_docstrings_and_comments():
    source = 'def f():\n    """Calls torch.cuda.synchronize() on device="cuda"."""\n    return 1  # torch.cuda.synchronize()\n'
    assert cuda_uses(source, "f") == set()
    assert cuda_uses(source.replace("return 1", "torch.cuda.synchronize()"), "f") == {"torch.cuda.synchronize"}


@pytest.mark.parametrize("module_name", sorted(CUDA_CALL_SITES))
def test_torch_redirected_module_still_uses_cuda(megatron_runtime, module_name):
    """If this fails, upstream no longer calls CUDA there: re-check the redirect, drop it if nothing else needs it."""
    function, use = CUDA_CALL_SITES[module_name]
    assert use in cuda_uses(_source(module_name), function), f"{module_name}:{function} no longer uses {use}"


@pytest.mark.parametrize("module_name", sorted(cpu_support.TORCH_REDIRECTED_MODULES))
def test_torch_redirect_is_installed(megatron_runtime, module_name):
    assert importlib.import_module(module_name).torch is cpu_support.CPU_TORCH


@pytest.mark.parametrize("redirect", cpu_support.FUNCTION_REDIRECTS, ids=lambda r: f"{r.module}.{r.attribute}")
def test_function_redirect_still_needed_and_installed(megatron_runtime, redirect):
    module_name, _, function = redirect.marker_source.partition(":")
    upstream = cpu_support.ORIGINALS.get((module_name, function)) or getattr(importlib.import_module(module_name), function)
    assert redirect.marker in inspect.getsource(upstream), f"upstream {redirect.marker_source} changed: re-check this redirect"
    for marker_source, marker in redirect.also:
        module_name, _, attribute = marker_source.partition(":")
        source = inspect.getsource(getattr(importlib.import_module(module_name), attribute))
        assert marker in source, f"upstream {marker_source} changed: re-check this redirect"
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


def _tiny_model_and_distributed_optimizer():
    """A tiny Lucie in DDP with megatron-core's DistributedOptimizer (torch's Adam here: no TE, no Apex)."""
    from lucie_nemo.model import lucie_tiny, use_local_layers

    return distributed_model_and_optimizer(use_local_layers(lucie_tiny(vocab_size=256)), lr=1e-2, bf16=False)


def _step_with_gradients(model, optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for parameter in model[0].parameters():
        parameter.main_grad.copy_(torch.randn(parameter.shape, generator=generator))
    optimizer.step()


def _fully_reshardable(model, optimizer, is_loading: bool = False) -> dict:
    model_state = model[0].sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
    return {"model": model_state,
            "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=metadata)}


def _adam(optimizer) -> tuple[list[torch.Tensor], list[dict]]:
    """The main parameters and torch Adam's per-parameter states, in parameter-group order."""
    (inner,) = [chained.optimizer for chained in optimizer.chained_optimizers]
    main = [parameter for group in inner.param_groups for parameter in group["params"]]
    return main, [inner.state[parameter] for parameter in main]


def test_distributed_optimizer_resumes_torch_adam_from_a_fully_reshardable_checkpoint(world, tmp_path):
    """The load restores main parameters, moments and each parameter's own step, and the next step
    equals the uninterrupted optimizer's (Adam's bias correction reads the step)."""
    from megatron.core import dist_checkpointing

    model, optimizer = _tiny_model_and_distributed_optimizer()
    _step_with_gradients(model, optimizer, seed=1)
    _step_with_gradients(model, optimizer, seed=2)
    dist_checkpointing.save(_fully_reshardable(model, optimizer), str(tmp_path))
    resumed_model, resumed = _tiny_model_and_distributed_optimizer()
    loaded = dist_checkpointing.load(_fully_reshardable(resumed_model, resumed, is_loading=True), str(tmp_path))
    resumed.load_state_dict(loaded["optimizer"])

    (main, states), (resumed_main, resumed_states) = _adam(optimizer), _adam(resumed)
    assert [float(state["step"]) for state in resumed_states] == [2.0] * len(states)
    assert len({id(state["step"]) for state in resumed_states}) == len(states)  # not one shared tensor
    for want, got, want_state, got_state in zip(main, resumed_main, states, resumed_states, strict=True):
        assert torch.equal(got, want)
        assert torch.equal(got_state["exp_avg"], want_state["exp_avg"])
        assert torch.equal(got_state["exp_avg_sq"], want_state["exp_avg_sq"])
    _step_with_gradients(model, optimizer, seed=3)
    _step_with_gradients(resumed_model, resumed, seed=3)
    assert all(torch.equal(got, want) for got, want in zip(_adam(resumed)[0], _adam(optimizer)[0], strict=True))
