"""Tensor names on both sides and the two re-packings between them (QKV per query group, SwiGLU fc1).

Megatron-Bridge checkpoints name tensors after the Transformer Engine spec (the local spec maps its
norms to the same names when it saves); the local names are accepted too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lucie_nemo.architecture import LucieShape

if TYPE_CHECKING:  # the names and shapes above the re-packings are needed without torch (lucie publish)
    import torch

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"

# Per-layer tensors: logical name -> accepted checkpoint names (Transformer Engine name first).
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "attn_norm": ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
    "qkv": ("self_attention.linear_qkv.weight",),
    "proj": ("self_attention.linear_proj.weight",),
    "mlp_norm": ("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"),
    "fc1": ("mlp.linear_fc1.weight",),
    "fc2": ("mlp.linear_fc2.weight",),
}


def megatron_shape(shape: LucieShape, source: str) -> tuple[int, ...]:
    """The shape of megatron-core tensor ``source`` (EMBEDDING, FINAL_NORM, OUTPUT_LAYER or a LAYER_TENSORS key,
    then of one layer) of a model of ``shape``."""
    h, d, f = shape.hidden_size, shape.head_dim, shape.ffn_hidden_size
    return {
        EMBEDDING: (shape.vocab_size, h), OUTPUT_LAYER: (shape.vocab_size, h), FINAL_NORM: (h,),
        "attn_norm": (h,), "qkv": ((shape.num_attention_heads + 2 * shape.num_query_groups) * d, h),
        "proj": (h, shape.num_attention_heads * d), "mlp_norm": (h,), "fc1": (2 * f, h), "fc2": (h, f),
    }[source]


@dataclass(frozen=True)
class HFTensor:
    """One Hugging Face tensor: its name, shape, and where it comes from on the Megatron side."""

    name: str
    shape: tuple[int, ...]
    source: str  # EMBEDDING, FINAL_NORM, OUTPUT_LAYER or a LAYER_TENSORS key
    layer: int | None = None
    part: str | None = None  # q/k/v of "qkv", gate/up of "fc1"


def hf_tensors(shape: LucieShape) -> list[HFTensor]:
    """Every tensor of the Hugging Face Llama model of ``shape``, in file order."""
    h, d = shape.hidden_size, shape.head_dim
    q_rows, kv_rows = shape.num_attention_heads * d, shape.num_query_groups * d
    tensors = [HFTensor("model.embed_tokens.weight", (shape.vocab_size, h), EMBEDDING)]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        tensors += [
            HFTensor(p + "input_layernorm.weight", (h,), "attn_norm", i),
            HFTensor(p + "self_attn.q_proj.weight", (q_rows, h), "qkv", i, "q"),
            HFTensor(p + "self_attn.k_proj.weight", (kv_rows, h), "qkv", i, "k"),
            HFTensor(p + "self_attn.v_proj.weight", (kv_rows, h), "qkv", i, "v"),
            HFTensor(p + "self_attn.o_proj.weight", (h, q_rows), "proj", i),
            HFTensor(p + "post_attention_layernorm.weight", (h,), "mlp_norm", i),
            HFTensor(p + "mlp.gate_proj.weight", (shape.ffn_hidden_size, h), "fc1", i, "gate"),
            HFTensor(p + "mlp.up_proj.weight", (shape.ffn_hidden_size, h), "fc1", i, "up"),
            HFTensor(p + "mlp.down_proj.weight", (h, shape.ffn_hidden_size), "fc2", i),
        ]
    tensors += [
        HFTensor("model.norm.weight", (h,), FINAL_NORM),
        HFTensor("lm_head.weight", (shape.vocab_size, h), OUTPUT_LAYER),
    ]
    return tensors


def _grouped_qkv(qkv: torch.Tensor, shape: LucieShape) -> torch.Tensor:
    """View a fused QKV weight as [groups, heads per group + 2, head dim, hidden]."""
    per_group = shape.num_attention_heads // shape.num_query_groups
    return qkv.view(shape.num_query_groups, per_group + 2, shape.head_dim, -1)


def split_qkv(qkv: torch.Tensor, shape: LucieShape, part: str) -> torch.Tensor:
    """The q, k or v rows of a fused QKV weight stored per query group (q heads, then k, then v)."""
    grouped = _grouped_qkv(qkv, shape)
    per_group = grouped.shape[1] - 2
    rows = {"q": slice(0, per_group), "k": slice(per_group, per_group + 1), "v": slice(per_group + 1, None)}[part]
    return grouped[:, rows].reshape(-1, qkv.shape[-1])


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: LucieShape) -> torch.Tensor:
    """The fused QKV weight (per query group) of separate q, k and v weights."""
    import torch

    groups, d = shape.num_query_groups, shape.head_dim
    hidden = q.shape[-1]
    grouped = torch.cat(
        [q.view(groups, -1, d, hidden), k.view(groups, 1, d, hidden), v.view(groups, 1, d, hidden)], dim=1
    )
    return grouped.reshape(-1, hidden)


def split_fc1(fc1: torch.Tensor, part: str) -> torch.Tensor:
    """The gate (first half) or up (second half) rows of a SwiGLU fc1 weight."""
    gate, up = fc1.chunk(2, dim=0)
    return gate if part == "gate" else up


def select(tensor: torch.Tensor, item: HFTensor, shape: LucieShape) -> torch.Tensor:
    """The Hugging Face tensor ``item`` cut out of its Megatron source tensor."""
    if item.source == "qkv":
        return split_qkv(tensor, shape, item.part)
    if item.source == "fc1":
        return split_fc1(tensor, item.part)
    return tensor


def megatron_tensor(shape: LucieShape, hf: Callable[[str], torch.Tensor], source: str,
                    layer: int | None = None) -> torch.Tensor:
    """Megatron tensor ``source`` (EMBEDDING, FINAL_NORM, OUTPUT_LAYER or a LAYER_TENSORS key) of ``layer``, in the
    local-spec layout, built from Hugging Face tensors ``hf(name)``."""
    import torch

    whole = {EMBEDDING: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight", OUTPUT_LAYER: "lm_head.weight"}
    if source in whole:
        return hf(whole[source])
    p = f"model.layers.{layer}."
    if source == "qkv":
        attn = p + "self_attn."
        return merge_qkv(hf(attn + "q_proj.weight"), hf(attn + "k_proj.weight"), hf(attn + "v_proj.weight"), shape)
    if source == "fc1":
        return torch.cat([hf(p + "mlp.gate_proj.weight"), hf(p + "mlp.up_proj.weight")], dim=0)
    one = {"attn_norm": "input_layernorm.weight", "proj": "self_attn.o_proj.weight",
           "mlp_norm": "post_attention_layernorm.weight", "fc2": "mlp.down_proj.weight"}
    return hf(p + one[source])
