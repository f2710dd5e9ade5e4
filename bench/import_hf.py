"""Wall time and peak RSS of `lucie import HF_DIR CKPT` (streamed, one tensor at a time) against the in-memory
import it replaced (tests/in_memory_import.py: the whole model built in bf16 and saved by Megatron-Bridge), on
Hugging Face folders of 2 and 4 full-width Lucie-7B layers (hidden 4,096, FFN 12,288, 32 heads, 8 key-value
heads, vocabulary 65,024), or narrower ones (``--width-divisor``).

For each depth, a random bf16 folder is written under the work folder (converters/hf_writer.py, one shard per
5 GB; 2 layers: 1.84 GB, 4 layers: 2.61 GB), then each import runs in a fresh child process, its peak RSS taken
from the kernel for that process alone (bench/child_peak.py), and the two checkpoints are compared tensor for
tensor (torch's own reader) before they are deleted. The last lines give, per import, the growth per layer and the ratio of the larger to the
smaller depth, and the streamed import's memory as a fraction of the in-memory one's at each depth:

    .venv/bin/python bench/import_hf.py [--workdir DIR] [--layers 2 4] [--width-divisor 1]

Disk: the folder of the largest depth plus two checkpoints of it (about 8 GB at 4 layers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from import_universal import GIB, run_child, shape_of  # noqa: E402

IMPORTS = ("streamed", "in memory (before)")


def write_hf_folder(folder: Path, shape) -> None:
    """A random Lucie-shaped bf16 Hugging Face folder of ``shape`` (weights and config.json, no tokenizer)."""
    from converters.hf_writer import parse_size, plan_shards, write_shards
    from converters.layout import hf_tensors
    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import PRETRAIN

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    produce = lambda item: (torch.randn(item.shape, generator=generator) * 0.02).to(torch.bfloat16)  # noqa: E731
    write_shards(folder, plan_shards(hf_tensors(shape), parse_size("5GB")), produce, progress=False)
    (folder / "config.json").write_text(json.dumps(hf_config(PRETRAIN, 0, shape=shape), indent=2) + "\n")


def same_checkpoints(first: Path, second: Path) -> bool:
    """Every tensor of the two weights-only checkpoints equal (dtype and bits)."""
    from test_export import read_everything

    _, a = read_everything(first / "iter_0000000")
    _, b = read_everything(second / "iter_0000000")
    return a.keys() == b.keys() and all(
        not isinstance(a[key], torch.Tensor) or (a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]))
        for key in a)


def bench_depth(layers: int, workdir: Path, divisor: int) -> dict[str, tuple[float, float]]:
    folder, streamed, in_memory = workdir / f"hf_{layers}L", workdir / "streamed", workdir / "in_memory"
    for path in (folder, streamed, in_memory):
        shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    write_hf_folder(folder, shape_of(layers, divisor))
    print(f"{layers} layers: wrote the Hugging Face folder in {time.perf_counter() - started:.0f} s", flush=True)
    commands = {
        "streamed": [sys.executable, "-m", "lucie_nemo.cli", "import", str(folder), str(streamed), "--no-progress"],
        "in memory (before)": [sys.executable, str(ROOT / "tests" / "in_memory_import.py"), "hf", str(folder),
                               str(in_memory)],
    }
    results = {}
    try:
        for name, command in commands.items():
            results[name] = run_child(command, workdir / f"{layers}L_hf_{name.split()[0]}.log")
            print(f"{layers} layers  {name:20s} {results[name][0]:8.1f} s  {results[name][1]:6.2f} GiB peak RSS",
                  flush=True)
        print(f"{layers} layers  the two checkpoints are the same tensor for tensor: "
              f"{same_checkpoints(streamed, in_memory)}", flush=True)
    finally:
        for path in (folder, streamed, in_memory):
            shutil.rmtree(path, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lucie-bench-import-hf"))
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 4])
    parser.add_argument("--width-divisor", type=int, default=1)
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    small, large = options.layers
    figures = {depth: bench_depth(depth, options.workdir, options.width_divisor) for depth in (small, large)}
    for name in IMPORTS:
        (t_small, m_small), (t_large, m_large) = figures[small][name], figures[large][name]
        print(f"{name:20s} {(m_large - m_small) / (large - small):+.3f} GiB per layer; ratio {large}/{small} layers: "
              f"time {t_large / t_small:.2f}, memory {m_large / m_small:.2f}")
    for depth in (small, large):
        streamed, in_memory = figures[depth]["streamed"][1], figures[depth]["in memory (before)"][1]
        print(f"{depth} layers: streamed / in memory peak RSS {streamed / in_memory:.2f} "
              f"({streamed:.2f} / {in_memory:.2f} GiB)")


if __name__ == "__main__":
    main()
