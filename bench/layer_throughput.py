"""Training throughput of the full-width Lucie-7B layer stack on one GPU: tokens/s, model TFLOP/s, MFU,
peak memory against lucie_nemo.memory_estimate's figure for the same stack.

A few real-size layers (hidden 4,096, FFN 12,288, 32/8 heads, vocabulary 65,024), sequence 4,096, bf16
or FP8 (Megatron-Bridge's tensorwise current scaling), Transformer Engine layers when installed. Model
FLOPs per token follow the usual count, 6 N + 12 L d s (N the parameters of the measured stack).
``--tp-shape 4`` gives each layer the matrix shapes of one TP4 rank (8 of 32 heads, 2 of 8 query groups,
a quarter of the FFN): one GPU's compute in the original TP4 PP4 layout, without its communication.
The last line compares the measured MFU with the original run's (1,566 tokens/s/GPU for the whole
model, i.e. about 7.6% of an H100's 989 TFLOP/s).

    python bench/layer_throughput.py --layers 4 --micro-batch 2 --steps 10 --precision fp8
"""

from __future__ import annotations

import argparse
import time

ORIGINAL_TOKENS_PER_GPU = 1_566
H100_BF16_DENSE_TFLOPS = 989.0  # H100 and H200 SXM, dense bf16
GIB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=4_096)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--precision", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--tp-shape", type=int, default=1, help="matrix shapes of one rank of this TP size")
    args = parser.parse_args()

    from lucie_nemo import runtime

    runtime.prepare()
    import torch

    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.cpu_support import transformer_engine_installed
    from lucie_nemo.distributed import attach_process_groups, single_process_world
    from lucie_nemo.model import lucie_7b, use_local_layers

    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")
    if args.precision == "fp8" and not transformer_engine_installed():
        raise SystemExit("Transformer Engine absent: FP8 not measured (install transformer-engine[pytorch])")
    provider = lucie_7b(num_layers=args.layers, seq_length=args.seq_length)
    if args.tp_shape > 1:  # one TP rank's GEMMs: fewer heads and a narrower FFN, same head size
        provider.num_attention_heads //= args.tp_shape
        provider.num_query_groups //= args.tp_shape
        provider.ffn_hidden_size //= args.tp_shape
        provider.kv_channels = LUCIE_7B.head_dim
    if args.precision == "fp8":
        provider.fp8, provider.fp8_recipe = "hybrid", "tensorwise"  # the recipes' FP8 preset
    # The fused wgrad accumulation writes into param.main_grad, which only Bridge's DDP wrapper allocates;
    # this bare model keeps plain .grad (a small cost the estimate of a run's speed does not include).
    provider.gradient_accumulation_fusion = False
    if not transformer_engine_installed():
        use_local_layers(provider, dtype=torch.bfloat16)
        provider.use_cpu_initialization = False
    with single_process_world():
        attach_process_groups(provider)
        provider.finalize()
        model = provider.provide().cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        torch.cuda.reset_peak_memory_stats()
        tokens = torch.randint(0, LUCIE_7B.vocab_size, (args.micro_batch, args.seq_length), device="cuda")
        positions = torch.arange(args.seq_length, device="cuda").expand(args.micro_batch, -1)

        def step() -> None:
            loss = model(tokens, positions, attention_mask=None, labels=tokens).float().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        parameters = sum(p.numel() for p in model.parameters())
        peak = torch.cuda.max_memory_allocated()

    tokens_per_second = args.micro_batch * args.seq_length / seconds
    flops_per_token = 6 * parameters + 12 * args.layers * LUCIE_7B.hidden_size * args.seq_length
    tflops = tokens_per_second * flops_per_token / 1e12
    mfu = tflops / args.peak_tflops
    full_flops = 6 * 6_706_958_336 + 12 * LUCIE_7B.num_layers * LUCIE_7B.hidden_size * args.seq_length
    original_mfu = ORIGINAL_TOKENS_PER_GPU * full_flops / 1e12 / H100_BF16_DENSE_TFLOPS
    print(f"device: {torch.cuda.get_device_name(0)}; Transformer Engine: {transformer_engine_installed()}")
    print(f"{args.layers} layers, {parameters:,} parameters, seq {args.seq_length}, micro batch {args.micro_batch}")
    print(f"{tokens_per_second:,.0f} tokens/s, {tflops:.1f} model TFLOP/s, MFU {mfu:.1%}")
    print(f"MFU {mfu:.1%} vs original run {original_mfu:.1%}: ratio {mfu / original_mfu:.2f}")
    if args.tp_shape == 1:
        estimate = _plan_estimate(args)
        print(f"peak memory {peak / GIB:.2f} GiB vs estimate {estimate / GIB:.2f} GiB: ratio {peak / estimate:.3f}")
    else:
        print(f"peak memory {peak / GIB:.2f} GiB (no estimate for a TP-shaped stack on one GPU)")


def _plan_estimate(args) -> int:
    """lucie_nemo.memory_estimate for this stack and this script's optimizer: bf16 weights, bf16 .grad,
    torch AdamW's two bf16 moments (no fp32 master copy), activations of one micro-batch."""
    from dataclasses import replace

    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.memory_estimate import Split, StateBytes, estimate_memory

    shape = replace(LUCIE_7B, num_layers=args.layers)
    return estimate_memory(shape, Split(), seq_length=args.seq_length, micro_batch_size=args.micro_batch,
                           microbatches=1, precision=args.precision,
                           state=StateBytes(param=2, grad=2, main_param=0, moments=4)).total


if __name__ == "__main__":
    main()
