"""Tokens/s per GPU of a layout: a step-time model with every assumption named (see ASSUMPTIONS).

step time = compute + pipeline bubble + tensor-parallel communication + pipeline sends
            + the part of the data-parallel gradient reduce-scatter and parameter all-gather
              that the overlap cannot hide.
It ranks layouts on one stack; its absolute figures are as good as the compute rate given
(measure it with bench/gpu_check.sh and pass it as --tflops).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lucie_nemo.architecture import LucieShape
from lucie_nemo.memory_estimate import Split, total_parameters

H100_BF16_DENSE_TFLOPS = 989.0
# Measured: bench/layer_throughput.py on one H200 (bench/results/gpu_check-h200-2026-12-04-run1.log), four
# full-width Lucie-7B layers, TP1, micro-batch 2, sequence 4,096, bf16, megatron-core's local layers (the node
# had no Transformer Engine: unfused attention), 354.7 model TFLOP/s. H100 and H200 share the bf16 peak.
MEASURED_BF16_TFLOPS = 354.7


@dataclass(frozen=True)
class Hardware:
    """The GPU and its links, with where each figure comes from."""

    name: str = "H100 SXM 80GB"
    memory_gib: float = 79.6  # 81,559 MiB as reported by nvidia-smi
    usable_fraction: float = 0.9  # headroom for what the estimate leaves out (allocator, CUDA context, NCCL)
    peak_bf16_tflops: float = H100_BF16_DENSE_TFLOPS
    # Achieved dense compute per GPU for a TP1 PP1 Llama-3-8B-sized model. bf16: measured here (above).
    # fp8: NVIDIA's published 744 model TFLOP/s (Megatron-Bridge performance summary, 25.11 container,
    # LLAMA3_8B, 8 x H100, FP8-CS, seq 8192, mbs 1), not measured here (no Transformer Engine yet).
    tflops: dict[str, float] = field(default_factory=lambda: {"bf16": MEASURED_BF16_TFLOPS, "fp8": 744.0})
    nvlink_gbytes_per_s: float = 360.0  # NVLink 4: 450 GB/s per direction, ~80% reached by NCCL
    network_gbytes_per_s: float = 50.0  # one 400 Gb/s InfiniBand NDR port per GPU (DGX H100 style)

    @property
    def usable_gib(self) -> float:
        return self.memory_gib * self.usable_fraction


ASSUMPTIONS = (
    "model FLOPs per token = 6 N + 12 L h s (N parameters, L layers, h hidden, s sequence); MFU against the "
    "H100 dense bf16 peak of 989 TFLOP/s",
    "compute runs at the --tflops rate (default: bf16 354.7 TFLOP/s, measured on an H200 by bench/gpu_check.sh "
    "with megatron-core's local layers, no Transformer Engine; fp8 744 TFLOP/s, NVIDIA's published Llama-3-8B "
    "figure, not measured here); full recompute adds "
    "one forward pass (+1/3)",
    "pipeline bubble (PP - 1) / m of the compute for m micro-batches per step (1F1B, Narayanan et al. 2021)",
    "tensor parallel with sequence parallel: 10 all-gathers/reduce-scatters of s x b x h bf16 per layer and "
    "micro-batch (4 forward, 6 backward), not overlapped, over NVLink at the --nvlink rate; TP kept within a node",
    "data parallel (distributed optimizer, 128 MiB buckets): the fp32 gradient reduce-scatter overlaps the last "
    "micro-batch's backward and the bf16 parameter all-gather the first forward; the rest is exposed; over the "
    "network at --network GB/s per GPU when the group spans nodes, else NVLink",
    "pipeline sends: 2 x s x b x h bf16 per micro-batch and stage boundary over the network, not overlapped; "
    "context-parallel KV exchange assumed hidden behind attention",
    "not modelled: kernel efficiency changes with TP/mbs, data loading, checkpoint saves, restarts",
)


def flops_per_token(shape: LucieShape, seq_length: int) -> float:
    return 6 * total_parameters(shape) + 12 * shape.num_layers * shape.hidden_size * seq_length


@dataclass(frozen=True)
class ThroughputEstimate:
    """Seconds per step by cause, and the resulting rates."""

    compute: float
    bubble: float
    tensor_parallel: float
    data_parallel: float
    pipeline_sends: float
    tokens_per_step: int
    gpus: int
    flops_per_token: float

    @property
    def step_seconds(self) -> float:
        return self.compute + self.bubble + self.tensor_parallel + self.data_parallel + self.pipeline_sends

    @property
    def tokens_per_second_per_gpu(self) -> float:
        return self.tokens_per_step / self.step_seconds / self.gpus

    @property
    def model_tflops(self) -> float:
        return self.tokens_per_second_per_gpu * self.flops_per_token / 1e12

    @property
    def mfu(self) -> float:
        return self.model_tflops / H100_BF16_DENSE_TFLOPS


def estimate_throughput(
    shape: LucieShape,
    split: Split,
    *,
    seq_length: int,
    global_batch_size: int,
    micro_batch_size: int,
    gpus_per_node: int,
    precision: str = "bf16",
    recompute: str = "none",
    hardware: Hardware = Hardware(),
    grad_bytes: int = 4,
) -> ThroughputEstimate:
    tp, pp, cp, dp = split.tensor_parallel, split.pipeline_parallel, split.context_parallel, split.data_parallel
    gpus = tp * pp * cp * dp
    microbatches = global_batch_size // (dp * micro_batch_size)
    tokens_per_step = global_batch_size * seq_length
    per_token = flops_per_token(shape, seq_length)
    rate = hardware.tflops[precision] * 1e12
    recompute_factor = 4 / 3 if recompute == "full" else 1.0
    compute = tokens_per_step / dp * per_token / (tp * pp * cp) * recompute_factor / rate
    bubble = compute * (pp - 1) / microbatches

    activation_bytes = 2 * seq_length * micro_batch_size * shape.hidden_size / cp
    collectives = 10 + (4 if recompute == "full" else 0)
    layers = shape.num_layers // pp
    tensor_parallel = 0.0
    if tp > 1:
        per_collective = activation_bytes * (tp - 1) / tp / (hardware.nvlink_gbytes_per_s * 1e9)
        tensor_parallel = collectives * layers * microbatches * per_collective

    pipeline_sends = 0.0
    if pp > 1:
        pipeline_sends = microbatches * 2 * activation_bytes / tp / (hardware.network_gbytes_per_s * 1e9)

    data_parallel = 0.0
    shard_group = dp * cp
    if shard_group > 1:
        spans_nodes = tp * cp * dp > gpus_per_node
        bandwidth = (hardware.network_gbytes_per_s if spans_nodes else hardware.nvlink_gbytes_per_s) * 1e9
        parameters = total_parameters(shape) / (tp * pp)
        fraction = (shard_group - 1) / shard_group
        reduce_scatter = parameters * grad_bytes * fraction / bandwidth
        all_gather = parameters * 2 * fraction / bandwidth
        per_microbatch = compute / microbatches
        data_parallel = max(0.0, reduce_scatter - per_microbatch * 2 / 3) + max(0.0, all_gather - per_microbatch / 3)
    return ThroughputEstimate(compute, bubble, tensor_parallel, data_parallel, pipeline_sends,
                              tokens_per_step, gpus, per_token)
