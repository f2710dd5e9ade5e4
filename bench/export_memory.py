"""Peak memory of `lucie export` on a synthetic full-width Lucie checkpoint (a few 7B-sized layers).

Builds a torch_dist checkpoint the way Megatron saves one (stacked layers, one chunk per layer, bf16,
hidden 4,096, FFN 12,288, 32 heads / 8 KV heads, vocabulary 65,024), then runs the export in a fresh
process and reads its peak RSS. An import-only process gives the baseline (torch, Megatron-Bridge,
transformers). The last line is (peak RSS - baseline) / checkpoint size.

    .venv/bin/python bench/export_memory.py [--layers 4] [--shard-size 1GB] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "lucie" / "tokenizer"
PEAK = "peak_rss_bytes="


def build_checkpoint(root: Path, layers: int) -> None:
    """iter_0000001/ of a Lucie-7B-width model with ``layers`` layers (random bf16 weights)."""
    import torch
    import yaml

    import converters  # noqa: F401  (prepares the Megatron runtime)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from converters.layout import EMBEDDING, FINAL_NORM, OUTPUT_LAYER
    from lucie_nemo.distributed import single_process_world
    from lucie_nemo.model import LUCIE_7B

    s = LUCIE_7B
    qkv_rows = (s.num_attention_heads + 2 * s.num_query_groups) * s.head_dim
    per_layer = {
        "self_attention.linear_qkv.layer_norm_weight": (s.hidden_size,),
        "self_attention.linear_qkv.weight": (qkv_rows, s.hidden_size),
        "self_attention.linear_proj.weight": (s.hidden_size, s.hidden_size),
        "mlp.linear_fc1.layer_norm_weight": (s.hidden_size,),
        "mlp.linear_fc1.weight": (2 * s.ffn_hidden_size, s.hidden_size),
        "mlp.linear_fc2.weight": (s.hidden_size, s.ffn_hidden_size),
    }
    folder = root / "iter_0000001"
    folder.mkdir(parents=True)
    state = {}
    for name, shape in ((EMBEDDING, (s.vocab_size, s.hidden_size)), (FINAL_NORM, (s.hidden_size,)),
                        (OUTPUT_LAYER, (s.vocab_size, s.hidden_size))):
        state[name] = ShardedTensor.from_rank_offsets(name, torch.randn(shape, dtype=torch.bfloat16))
    for name, shape in per_layer.items():
        for i in range(layers):
            key = f"decoder.layers.{name}"
            tensor = torch.randn(shape, dtype=torch.bfloat16)
            state[f"{key}.{i}"] = ShardedTensor.from_rank_offsets(key, tensor, (0, i, layers), prepend_axis_num=1)
    with single_process_world():
        dist_checkpointing.save(state, str(folder))
    model = {"num_layers": layers, "hidden_size": s.hidden_size, "ffn_hidden_size": s.ffn_hidden_size,
             "num_attention_heads": s.num_attention_heads, "num_query_groups": s.num_query_groups,
             "kv_channels": s.head_dim, "seq_length": 4096, "rotary_base": 500000, "normalization": "RMSNorm"}
    (folder / "run_config.yaml").write_text(yaml.safe_dump({"model": model}))
    (root / "latest_checkpointed_iteration.txt").write_text("1")
    shutil.copytree(TOKENIZER, folder / "tokenizer")


def export(ckpt: Path, out: Path, shard_size: str) -> None:
    from converters.export import export_checkpoint

    export_checkpoint(ckpt, out, shard_size=shard_size, progress=False)


def baseline() -> None:
    import converters.export  # noqa: F401


def peak_rss_of(*args: str) -> int:
    """Peak RSS in bytes of this script run as a child with ``args`` (the child reports its own)."""
    run = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return int(run.stdout.strip().splitlines()[-1].removeprefix(PEAK))


def report_peak() -> None:
    print(f"{PEAK}{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--role", choices=["build", "export", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "build":
        return build_checkpoint(args.paths[0], args.layers)
    if args.role in ("export", "baseline"):
        export(args.paths[0], args.paths[1], args.shard_size) if args.role == "export" else baseline()
        return report_peak()
    work = Path(tempfile.mkdtemp(prefix="export-memory-", dir=args.workdir))
    try:
        subprocess.run([sys.executable, __file__, "--role", "build", "--layers", str(args.layers), str(work / "ckpt")], check=True)
        size = sum(p.stat().st_size for p in (work / "ckpt").rglob("*.distcp"))
        base = peak_rss_of("--role", "baseline")
        peak = peak_rss_of("--role", "export", "--shard-size", args.shard_size, str(work / "ckpt"), str(work / "hf"))
        written = sum(p.stat().st_size for p in (work / "hf").glob("*.safetensors"))
        print(f"checkpoint: {args.layers} layers of hidden 4096, vocab 65024: {size / 2**30:.2f} GiB in .distcp files")
        print(f"export: {written / 2**30:.2f} GiB of safetensors in shards of at most {args.shard_size}")
        print(f"peak RSS: export {peak / 2**30:.2f} GiB, imports alone {base / 2**30:.2f} GiB")
        print(f"(peak RSS - imports) / checkpoint size = {(peak - base) / size:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
