"""Training throughput of the full-width Lucie-7B layer stack on one GPU: tokens/s, model TFLOP/s, MFU.

A few real-size layers (hidden 4,096, FFN 12,288, 32/8 heads, vocabulary 65,024), sequence 4,096, bf16,
Transformer Engine layers when installed. Model FLOPs per token follow the usual count,
6 N + 12 L d s (N the parameters of the measured stack). The last line compares the measured MFU with
the original run's (1,566 tokens/s/GPU for the whole model, i.e. about 7.6% of an H100's 989 TFLOP/s).

    python bench/layer_throughput.py --layers 4 --micro-batch 1 --steps 10
"""

from __future__ import annotations

import argparse
import time

ORIGINAL_TOKENS_PER_GPU = 1_566
H100_BF16_DENSE_TFLOPS = 989.0  # H100 and H200 SXM, dense bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=4_096)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
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
    provider = lucie_7b(num_layers=args.layers, seq_length=args.seq_length)
    if not transformer_engine_installed():
        use_local_layers(provider, dtype=torch.bfloat16)
        provider.use_cpu_initialization = False
    with single_process_world():
        attach_process_groups(provider)
        provider.finalize()
        model = provider.provide().cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
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


if __name__ == "__main__":
    main()
