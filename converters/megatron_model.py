"""A Lucie Megatron model (local layers, CPU) of a given shape, in a one-process world."""

from __future__ import annotations

import torch

from lucie_nemo import runtime

runtime.prepare()  # before Megatron is imported (import hook, quiet logs, CPU redirects)

from megatron.core.models.gpt import GPTModel  # noqa: E402

from lucie_nemo.distributed import attach_process_groups  # noqa: E402
from lucie_nemo.model import LucieModelProvider, LucieShape, build_provider, use_local_layers  # noqa: E402
from lucie_nemo.phases import Phase  # noqa: E402


def local_provider(shape: LucieShape, phase: Phase, dtype: torch.dtype, **overrides) -> LucieModelProvider:
    """The provider of ``shape`` for ``phase`` with local layers in ``dtype`` (call inside single_process_world)."""
    provider = use_local_layers(build_provider(shape, phase, **overrides), dtype)
    attach_process_groups(provider)
    provider.finalize()
    return provider


def build_model(shape: LucieShape, phase: Phase, dtype: torch.dtype) -> GPTModel:
    """Instantiate the model on CPU (call inside lucie_nemo.distributed.single_process_world)."""
    return local_provider(shape, phase, dtype).provide()
