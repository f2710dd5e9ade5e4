"""The sizes of Lucie-shaped models (plain facts, importable without torch or Megatron)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LucieShape:
    """The sizes of a Lucie-shaped model (everything else is shared)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


LUCIE_7B = LucieShape(
    num_layers=32,
    hidden_size=4_096,
    ffn_hidden_size=12_288,
    num_attention_heads=32,
    num_query_groups=8,
    vocab_size=65_024,
)

# Same rules, small sizes: tests and the one-machine demo.
TINY = LucieShape(
    num_layers=4,
    hidden_size=128,
    ffn_hidden_size=384,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=8_192,
)

# The rules every Lucie-shaped model follows, as megatron-core config fields: LucieModelProvider's values (a test
# checks that they agree), here so that checkpoint readers can check a saved config without importing Megatron.
LUCIE_RULES: dict[str, object] = {
    "normalization": "RMSNorm",
    "gated_linear_unit": True,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "share_embeddings_and_output_weights": False,
    "position_embedding_type": "rope",
    "rotary_percent": 1.0,
    "qk_layernorm": False,
    "num_moe_experts": None,
}
