"""Per-GPU training memory of a Lucie-shaped model in a parallel layout, split by named source.

Model state (exact, checked against megatron-core's allocations in tests/test_plan.py):
- weights: the parameters of the most loaded pipeline stage, TP-sharded matrices and replicated
  norms, in the parameter dtype (bf16 on GPU);
- gradients: DDP's contiguous gradient buffer, fp32 when ``grad_reduce_in_fp32`` (the recipe's);
- optimizer: the distributed optimizer's shard (1 / (DP x CP)) of fp32 main parameters (none when
  the parameters are already fp32) and Adam's two fp32 moments.

Activations (an estimate): what one micro-batch keeps for the backward pass, per layer, following
the method of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", Table 2: the same accounting as Megatron-LM's theoretical memory report), redone for
Lucie's layer: flash attention (no s^2 scores), no dropout, GQA, SwiGLU. Elements kept per token
(bf16, divided by TP x CP; sequence parallel shards the norms' tensors when TP > 1):

    attention: norm input h, norm output h, Q h, K and V 2h*g/a, attention output h
    MLP:       norm input h, norm output h, FC1 output 2f (gate and up), SwiGLU output f

i.e. 6h + 2h*g/a + 3f elements = 31 bytes x h per token for Lucie (Megatron's 18 + 4f/h gives
30 x h for a non-gated MLP of the same f). Full recompute keeps each layer's input (2h bytes)
and recomputes one layer at a time. The first pipeline stage keeps min(PP, micro-batches)
micro-batches in flight (1F1B); the last one also holds the logits. FP8 GEMM inputs are kept in
FP8 by Transformer Engine, which also caches FP8 copies (and transposes) of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lucie_nemo.architecture import LucieShape

Recompute = Literal["none", "full"]
GIB = 1024**3


@dataclass(frozen=True)
class Split:
    """How one model replica is laid out: the sizes that decide a GPU's share."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1
    data_parallel: int = 1


def layer_parameters(shape: LucieShape, tensor_parallel: int = 1) -> int:
    """Parameters of one decoder layer on one TP rank (norm weights are replicated)."""
    h, f = shape.hidden_size, shape.ffn_hidden_size
    qkv_rows = (shape.num_attention_heads + 2 * shape.num_query_groups) * shape.head_dim
    matrices = qkv_rows * h + h * h + 2 * f * h + h * f
    return 2 * h + matrices // tensor_parallel


def stage_parameters(shape: LucieShape, split: Split, stage: int) -> int:
    """Parameters held by one GPU of pipeline stage ``stage`` (embedding first, norm and output last)."""
    pp, tp = split.pipeline_parallel, split.tensor_parallel
    count = shape.num_layers // pp * layer_parameters(shape, tp)
    vocabulary_matrix = shape.vocab_size * shape.hidden_size // tp
    if stage == 0:
        count += vocabulary_matrix  # input embedding
    if stage == pp - 1:
        count += vocabulary_matrix + shape.hidden_size  # output layer, final norm
    return count


def total_parameters(shape: LucieShape) -> int:
    return stage_parameters(shape, Split(), 0)


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of each model-state buffer."""

    param: int = 2  # bf16 weights
    grad: int = 4  # grad_reduce_in_fp32
    main_param: int = 4  # fp32 master copy; 0 when the weights are fp32 already
    moments: int = 8  # Adam exp_avg + exp_avg_sq, fp32

    @classmethod
    def for_dtype(cls, param_bytes: int, grad_reduce_in_fp32: bool = True) -> "StateBytes":
        return cls(param=param_bytes, grad=4 if grad_reduce_in_fp32 else param_bytes,
                   main_param=0 if param_bytes == 4 else 4)


def model_state_bytes(parameters: int, split: Split, state: StateBytes = StateBytes()) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes for ``parameters`` held by one GPU; the distributed
    optimizer shards its state over the data-parallel x context-parallel group."""
    shard = split.data_parallel * split.context_parallel
    optimizer = -(-parameters // shard) * (state.main_param + state.moments)
    return parameters * state.param, parameters * state.grad, optimizer


def layer_activation_bytes(shape: LucieShape, tokens: float, precision: str, recompute: Recompute) -> float:
    """Bytes one layer keeps for backward, for ``tokens`` tokens on this GPU (already / TP / CP)."""
    h, f = shape.hidden_size, shape.ffn_hidden_size
    if recompute == "full":
        return 2 * h * tokens  # the layer's input, bf16
    kv = 2 * h * shape.num_query_groups / shape.num_attention_heads
    if precision == "fp8":  # norm outputs and SwiGLU output as FP8 GEMM inputs, plus an FP8 copy of the attention output
        per_token = 2 * (h + h + kv + h) + 1 * h + 1 * h  # attention block
        per_token += 2 * h + 1 * h + 2 * 2 * f + 1 * f  # MLP block
    else:
        per_token = 2 * (6 * h + kv + 3 * f)
    softmax_statistics = 4 * shape.num_attention_heads  # flash attention's fp32 log-sum-exp per head
    return per_token * tokens + softmax_statistics * tokens


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the most loaded GPU, by source."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    fp8_weight_cache: int
    recompute: Recompute
    stage: int  # the pipeline stage it describes

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.fp8_weight_cache

    @property
    def total_gib(self) -> float:
        return self.total / GIB


def estimate_memory(
    shape: LucieShape,
    split: Split,
    *,
    seq_length: int,
    micro_batch_size: int,
    microbatches: int,
    precision: str = "bf16",
    recompute: Recompute = "none",
    state: StateBytes = StateBytes(),
    fp8_bf16_first_last_layers: bool = True,
) -> MemoryEstimate:
    """The per-GPU estimate of the heavier of the first and last pipeline stage."""
    tp, pp, cp = split.tensor_parallel, split.pipeline_parallel, split.context_parallel
    tokens = seq_length * micro_batch_size / (tp * cp)
    layers = shape.num_layers // pp
    per_layer = layer_activation_bytes(shape, tokens, precision, recompute)
    full_layer = layer_activation_bytes(shape, tokens, precision, "none")
    recompute_working_set = full_layer if recompute == "full" else 0
    logits = 2 * seq_length * micro_batch_size / cp * shape.vocab_size / tp  # bf16, TE cross-entropy in place
    final_norm = 2 * 2 * shape.hidden_size * tokens
    fp8_cache_per_layer = 2 * (layer_parameters(shape, tp) - 2 * shape.hidden_size)  # FP8 weight and transpose

    estimates = []
    for stage in sorted({0, pp - 1}):
        in_flight = min(pp - stage, microbatches)
        activations = in_flight * layers * per_layer + recompute_working_set
        if stage == pp - 1:
            activations += logits + final_norm
        weights, gradients, optimizer = model_state_bytes(stage_parameters(shape, split, stage), split, state)
        bf16_layers = (stage == 0) + (stage == pp - 1) if fp8_bf16_first_last_layers else 0  # Bridge's first_last_layers_bf16
        cache = max(layers - bf16_layers, 0) * fp8_cache_per_layer if precision == "fp8" else 0
        estimates.append(MemoryEstimate(weights, gradients, optimizer, int(activations), cache, recompute, stage))
    return max(estimates, key=lambda estimate: estimate.total)
