"""Run megatron-core and Megatron-Bridge on a machine without CUDA (gloo, one rank or several).

Megatron assumes CUDA at a handful of call sites. Each redirect below names the
upstream place it covers; ``activate()`` applies them only when CUDA is absent.
tests/test_cpu_support.py checks that each one is still needed (the upstream CUDA
call is still there) and still hits (it is installed and training runs), so a
version bump that changes them fails in CI instead of in users' hands.

Config-level choices for CPU (gloo, fp32, no sequence parallelism, which optimizer) are in
``adapt_config_for_cpu``. lucie_nemo.model imports this module (for the import hook), never
the other way round.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

# --- a CPU stand-in for `torch` inside chosen Megatron modules --------------------------

_FACTORIES = frozenset(
    {"tensor", "empty", "zeros", "ones", "full", "rand", "randn", "randint", "arange", "as_tensor"}
)


def _on_cpu(device: Any) -> Any:
    return "cpu" if device is not None and str(device).startswith("cuda") else device


class _NullStream:
    """A CUDA stream stand-in: every method (wait_stream, synchronize, ...) does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class _CpuCuda:
    """``torch.cuda`` as seen from a redirected module: device queries answer "cpu"."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    current_device = staticmethod(lambda: "cpu")
    synchronize = staticmethod(lambda *args, **kwargs: None)
    empty_cache = staticmethod(lambda: None)
    Stream = staticmethod(lambda *args, **kwargs: _NullStream())
    current_stream = staticmethod(lambda *args, **kwargs: _NullStream())
    stream = staticmethod(lambda *args, **kwargs: contextlib.nullcontext())
    get_rng_state = staticmethod(lambda *args, **kwargs: torch.get_rng_state())
    set_rng_state = staticmethod(lambda *args, **kwargs: None)  # the CPU state is restored separately


class _CpuTorch(types.ModuleType):
    """``torch`` as seen from a redirected module: tensors asked on "cuda" land on the CPU."""

    cuda = _CpuCuda()

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(torch, name)
        if name in _FACTORIES:

            @functools.wraps(attribute)
            def factory(*args, **kwargs):
                if "device" in kwargs:
                    kwargs["device"] = _on_cpu(kwargs["device"])
                return attribute(*args, **kwargs)

            return factory
        return attribute


CPU_TORCH = _CpuTorch()

# Modules whose own code allocates on "cuda", syncs or uses streams; each sees CPU_TORCH.
TORCH_REDIRECTED_MODULES: dict[str, str] = {
    "megatron.bridge.training.setup": 'setup(): start_time_tensor on device="cuda"',
    "megatron.bridge.training.checkpointing": "get_rng_state(): torch.cuda.get_rng_state(); iteration all-reduce",
    "megatron.bridge.training.utils.train_utils": 'training_log(): dummy_overflow_buf on device="cuda"',
    "megatron.bridge.training.train": 'checkpoint_and_decide_exit(): the timed stop\'s flag on device="cuda"',
    "megatron.bridge.data.loaders": 'build_train_valid_test_data_loaders(): flags on device="cuda"',
    "megatron.core.timers": "Timer.start/stop(): torch.cuda.synchronize()",
    "megatron.training.models.dist_utils": "DDP wrapping on a torch.cuda.Stream()",
    "megatron.core.distributed.param_and_grad_buffer": "grad reduction on torch.cuda streams",
    "megatron.core.optimizer.optimizer": 'found_inf / overflow buffers on device="cuda"',
    "megatron.core.optimizer.distrib_optimizer": "get_parameter_state_dp_zero(): gather buffers on torch.cuda.current_device()",
    "megatron.core.optimizer.clip_grads": 'get_grad_norm_fp32(): total_norm on device="cuda"',
    "megatron.core.pipeline_parallel.schedules": 'forward_backward_no_pipelining(): total_num_tokens on "cuda"',
    "megatron.core.pipeline_parallel.p2p_communication": "P2PCommunicator: recv buffers on torch.cuda.current_device()",
    "megatron.core.models.common.embeddings.rotary_pos_embedding": "get_emb(): inv_freq.to(torch.cuda.current_device())",
    "megatron.core.utils": "GlobalMemoryBuffer.get_tensor(): torch.cuda.current_device()",
    "megatron.core.transformer.utils": 'get_default_causal_mask(): mask on device="cuda" (attention_mask=None)',
    "megatron.core.dist_checkpointing.strategies.filesystem_async": "FileSystemWriterAsync: torch.cuda.synchronize()",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": 'save verification flags on device="cuda"',
}


# --- function-level redirects ------------------------------------------------------------


def _initialize_without_cuda(original):
    """initialize.initialize_megatron asserts CUDA unless allow_no_cuda=True (setup() never passes it)."""
    return functools.partial(original, allow_no_cuda=True)


def _skip_jit_warmup(original):
    """initialize.set_jit_fusion_options warms fused kernels up on CUDA tensors; nothing to warm on CPU."""
    return lambda *args, **kwargs: None


def _cpu_initialization(original):
    """model_provider.get_model forces use_cpu_initialization=False, then moves the model to CUDA."""

    @functools.wraps(original)
    def get_model(*args, **kwargs):
        kwargs["use_cpu_initialization"] = True
        return original(*args, **kwargs)

    return get_model


def _seed_cpu_rng_tracker(original):
    """initialize._set_random_seed seeds Megatron's RNG tracker only when a CUDA device exists;
    model init forks that tracker. Seed the CPU-capable ("inference") tracker instead."""

    @functools.wraps(original)
    def set_random_seed(seed, *args, **kwargs):
        original(seed, *args, **kwargs)
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)

    return set_random_seed


def _clip_grads_on_cpu(original):
    """clip_grads.clip_grad_by_total_norm_fp32 asserts torch.cuda.FloatTensor grads and scales
    them with a CUDA multi-tensor kernel; scale the CPU grads in place instead."""

    @functools.wraps(original)
    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        name = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, name).detach() for p in parameters if getattr(p, name, None) is not None]
        clip_coeff = max_norm / (total_norm + 1.0e-6)
        if clip_coeff < 1.0:
            torch._foreach_mul_(grads, clip_coeff)

    return clip_grad_by_total_norm_fp32


@contextlib.contextmanager
def _cpu_tensors_typed_as_cuda():
    """Within the block, ``tensor.type()`` of a CPU tensor names its CUDA type (torch.FloatTensor ->
    torch.cuda.FloatTensor)."""
    original = torch.Tensor.type

    def type_(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if args or kwargs or self.device.type != "cpu":  # a conversion, or not a CPU tensor
            return result
        return result.replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original


def _distributed_optimizer_on_cpu(original):
    """DistributedOptimizer._build_model_and_main_param_groups sorts parameters by ``param.type()``
    and refuses any that is not a torch.cuda one; let it see the CPU parameters' CUDA type names.

    Without Transformer Engine or Apex it steps with torch's Adam: lucie_nemo.torch_adam's checkpoint
    fixes apply (on a GPU without them too, where lucie_nemo.torch_adam.activate installs them alone)."""
    from lucie_nemo.torch_adam import with_torch_adam_checkpoints

    class DistributedOptimizer(with_torch_adam_checkpoints(original)):
        @classmethod
        def _build_model_and_main_param_groups(cls, *args, **kwargs):
            with _cpu_tensors_typed_as_cuda():
                return super()._build_model_and_main_param_groups(*args, **kwargs)

    DistributedOptimizer.__module__ = original.__module__
    return DistributedOptimizer


@dataclass(frozen=True)
class Redirect:
    """Replace ``module.attribute`` by ``make(original)``; ``marker`` is the CUDA-only code it covers."""

    module: str
    attribute: str
    make: Callable[[Any], Any]
    marker_source: str  # "module:function" whose source must still contain the marker
    marker: str
    also: tuple[tuple[str, str], ...] = ()  # (marker_source, marker) of further code the replacement covers


FUNCTION_REDIRECTS: tuple[Redirect, ...] = (
    Redirect("megatron.bridge.training.setup", "initialize_megatron", _initialize_without_cuda,
             "megatron.bridge.training.initialize:initialize_megatron", "assert torch.cuda.is_available()"),
    Redirect("megatron.bridge.training.setup", "set_jit_fusion_options", _skip_jit_warmup,
             "megatron.bridge.training.initialize:_warmup_jit_function", 'device="cuda"'),
    Redirect("megatron.bridge.models.model_provider", "get_model", _cpu_initialization,
             "megatron.bridge.models.model_provider:get_model", "model_module.cuda(torch.cuda.current_device())"),
    Redirect("megatron.bridge.training.initialize", "_set_random_seed", _seed_cpu_rng_tracker,
             "megatron.bridge.training.initialize:_set_random_seed", "if torch.cuda.device_count() > 0:"),
    Redirect("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32", _clip_grads_on_cpu,
             "megatron.core.optimizer.clip_grads:clip_grad_by_total_norm_fp32",
             "assert param.grad.type() == 'torch.cuda.FloatTensor'"),
    Redirect("megatron.core.optimizer", "DistributedOptimizer", _distributed_optimizer_on_cpu,
             "megatron.core.optimizer.distrib_optimizer:DistributedOptimizer",
             "elif model_param.type() == 'torch.cuda.FloatTensor':",
             also=(("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer",
                    'steps = list(set([s["step"].item() for s in inner_state_dict["state"].values()]))'),
                   ("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer",
                    "dst_tensors[key].copy_(tensors[key])"))),
)


def _tensor_cuda_is_identity(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Tensor.cuda(): gpt_step.get_batch_from_iterator and utils/batch_utils move each batch
    with ``val.cuda(non_blocking=True)``; on CPU the batch stays where it is."""
    return self


# --- `import megatron.bridge` without Transformer Engine ---------------------------------


class _PlaceholderTE(types.ModuleType):
    """Stands in for ``transformer_engine.pytorch`` while one Megatron-Bridge module loads."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _PlaceholderTE(f"{self.__name__}.{name}")


class _LoraLayersLoader(importlib.abc.Loader):
    """megatron/bridge/peft/lora_layers.py runs ``import transformer_engine.pytorch as te`` at
    import time, and ``import megatron.bridge`` reaches it (model_bridge -> peft_bridge). Load
    that one module with a placeholder and remove it afterwards, so megatron-core's own
    ``HAVE_TE`` checks still see that Transformer Engine is absent."""

    DEPENDENCIES = (
        "megatron.core.transformer.moe.moe_utils",
        "megatron.bridge.peft.adapter_wrapper",
        "megatron.bridge.peft.lora_merge",
    )

    def __init__(self, wrapped: importlib.abc.Loader):
        self.wrapped = wrapped

    def create_module(self, spec):
        return self.wrapped.create_module(spec)

    def exec_module(self, module):
        for dependency in self.DEPENDENCIES:  # imported without the placeholder in place
            importlib.import_module(dependency)
        placeholder = _PlaceholderTE("transformer_engine")
        placeholder.pytorch = _PlaceholderTE("transformer_engine.pytorch")
        sys.modules["transformer_engine"] = placeholder
        sys.modules["transformer_engine.pytorch"] = placeholder.pytorch
        try:
            self.wrapped.exec_module(module)
        finally:
            del sys.modules["transformer_engine"], sys.modules["transformer_engine.pytorch"]


class _LoraLayersFinder(importlib.abc.MetaPathFinder):
    TARGET = "megatron.bridge.peft.lora_layers"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None:
            spec.loader = _LoraLayersLoader(spec.loader)
        return spec


def transformer_engine_installed() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def install_import_hook() -> None:
    """Let ``import megatron.bridge`` succeed where Transformer Engine is not installed."""
    if transformer_engine_installed() or any(isinstance(f, _LoraLayersFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _LoraLayersFinder())


# --- activation ------------------------------------------------------------------------

_active = False
ORIGINALS: dict[tuple[str, str], Any] = {}  # (module, attribute) -> the upstream object replaced


def activate() -> bool:
    """Apply every CPU redirect once, only when CUDA is absent. Returns whether they are active."""
    global _active
    install_import_hook()
    if _active or torch.cuda.is_available():
        return _active
    for name in TORCH_REDIRECTED_MODULES:
        importlib.import_module(name).torch = CPU_TORCH
    for redirect in FUNCTION_REDIRECTS:
        module = importlib.import_module(redirect.module)
        original = getattr(module, redirect.attribute)
        ORIGINALS[(redirect.module, redirect.attribute)] = original
        replacement = redirect.make(original)
        replacement.lucie_redirect = redirect
        setattr(module, redirect.attribute, replacement)
    torch.Tensor.cuda = _tensor_cuda_is_identity
    _active = True
    return _active


def adapt_config_for_cpu(cfg, distributed_optimizer: bool = False) -> None:
    """Run-config choices for a CPU run of a recipe (gloo, fp32); the model's layers are the caller's
    (``lucie_nemo.model.use_local_layers``: this module stays below lucie_nemo.model).
    ``distributed_optimizer`` keeps the recipe's DistributedOptimizer (its fully reshardable checkpoints
    are those a GPU run writes); otherwise the plain optimizer, the same at world size 1 up to rounding."""
    cfg.mixed_precision = None
    cfg.dist.distributed_backend = "gloo"
    cfg.rng.inference_rng_tracker = True  # the default tracker needs torch.cuda RNG states
    # ...and the CPU tracker saves no states, which Bridge's loader treats as a broken checkpoint
    # on resume. Nothing random is drawn after init here (dropout 0; data order follows
    # consumed samples), so a resumed CPU run continues identically without them.
    cfg.checkpoint.load_rng = False
    if not distributed_optimizer:
        cfg.optimizer.use_distributed_optimizer = False
        cfg.ddp.use_distributed_optimizer = False
    # megatron-core's local layers (torch norms) refuse sequence parallelism; without it each TP rank
    # holds the whole sequence, and the weights and optimizer state are the same.
    cfg.model.sequence_parallel = False
    cfg.optimizer.bf16 = False
    cfg.ddp.overlap_grad_reduce = False
    cfg.ddp.overlap_param_gather = False
