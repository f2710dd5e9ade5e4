"""Lucie-7B on megatron-core, declared once as a Megatron-Bridge GPT model provider.

Every architecture fact lives in ``lucie_nemo.architecture`` (sizes) and ``LucieModelProvider``
(rules shared by every size: SwiGLU, RMSNorm, GQA, RoPE without scaling, no
biases, untied embeddings, init std 0.009). ``lucie_7b()`` and ``lucie_tiny()``
build providers for a phase; recipes, converters, the CLI and the tests use them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["LUCIE_7B", "TINY", "LucieModelProvider", "LucieShape", "lucie_7b", "lucie_tiny", "use_local_layers"]

import torch
import torch.nn.functional as F

from lucie_nemo import cpu_support, runtime
from lucie_nemo.architecture import LUCIE_7B, TINY, LucieShape
from lucie_nemo.phases import PRETRAIN, Phase

cpu_support.install_import_hook()  # `import megatron.bridge` needs it where Transformer Engine is absent
runtime.quiet_imports()  # its import logs tracebacks and warnings about what is absent

from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec  # noqa: E402


@dataclass
class LucieModelProvider(GPTModelProvider):
    """The Lucie architecture rules; sizes come from a LucieShape."""

    normalization: str = "RMSNorm"
    layernorm_epsilon: float = 1e-5
    activation_func: object = F.silu
    gated_linear_unit: bool = True
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    share_embeddings_and_output_weights: bool = False
    position_embedding_type: str = "rope"
    rotary_percent: float = 1.0
    rope_scaling: bool = False  # Llama-3.1 presets turn this on; Lucie has no RoPE scaling
    init_method_std: float = 0.009
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    make_vocab_size_divisible_by: int = 128
    should_pad_vocab: bool = False  # 65,024 = 127 x 512 needs no padding up to TP 4
    bf16: bool = True
    params_dtype: torch.dtype = torch.bfloat16
    autocast_dtype: torch.dtype = torch.bfloat16
    bias_activation_fusion: bool = True
    persist_layer_norm: bool = True
    masked_softmax_fusion: bool = True
    apply_rope_fusion: bool = True
    seq_length: int = field(default=PRETRAIN.seq_length)
    rotary_base: int = field(default=PRETRAIN.rotary_base)


def build_provider(shape: LucieShape, phase: Phase = PRETRAIN, **overrides) -> LucieModelProvider:
    """A provider of ``shape`` with ``phase``'s context length and RoPE theta."""
    sizes = asdict(shape)
    provider = LucieModelProvider(
        **sizes,
        kv_channels=shape.head_dim,
        seq_length=phase.seq_length,
        rotary_base=phase.rotary_base,
    )
    for name, value in overrides.items():
        if not hasattr(provider, name):
            raise AttributeError(f"LucieModelProvider has no field {name!r}")
        setattr(provider, name, value)
    return provider


def lucie_7b(phase: Phase = PRETRAIN, **overrides) -> LucieModelProvider:
    """Full-size Lucie-7B for ``phase``."""
    return build_provider(LUCIE_7B, phase, **overrides)


def lucie_tiny(phase: Phase = PRETRAIN, vocab_size: int = TINY.vocab_size, **overrides) -> LucieModelProvider:
    """A tiny Lucie-shaped model for tests and the local demo."""
    shape = LucieShape(**{**asdict(TINY), "vocab_size": vocab_size})
    return build_provider(shape, phase, **overrides)


def use_local_layers(provider: LucieModelProvider, dtype: torch.dtype = torch.float32) -> LucieModelProvider:
    """Switch a provider to megatron-core's local (non-Transformer-Engine) layers, fusions off.

    Used where Transformer Engine cannot exist (a machine without CUDA).
    """
    provider.transformer_layer_spec = local_layer_spec
    provider.use_cpu_initialization = True
    provider.gradient_accumulation_fusion = False
    provider.bias_activation_fusion = False
    provider.persist_layer_norm = False
    provider.masked_softmax_fusion = False
    provider.apply_rope_fusion = False
    provider.cross_entropy_loss_fusion = False
    provider.params_dtype = dtype
    provider.bf16 = dtype == torch.bfloat16
    provider.autocast_dtype = dtype
    return provider
