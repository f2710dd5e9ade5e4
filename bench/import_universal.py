"""Wall time and peak RSS of `lucie import` (full: the run's checkpoint with its optimizer state), `lucie import
--weights-only` (and, as its baseline, the in-memory import it replaced: tests/in_memory_import.py) and
`lucie export` on universal checkpoints of 2 and 4 full-width Lucie-7B layers (hidden 4,096,
FFN 12,288, 32 heads, 8 key-value heads, vocabulary 65,024), or of narrower layers (``--width-divisor``: hidden,
FFN and heads divided, the vocabulary kept) for a quicker run.

For each depth, a synthetic universal checkpoint in the released format is written under the work folder
(tests/universal_fixture.py: fp32, exp_avg and exp_avg_sq of every parameter; 2 layers: 11 GB, 4 layers:
15.7 GB), then each command runs in a fresh child process (imports included), its peak RSS taken from the
kernel for that process alone (bench/child_peak.py); outputs and the checkpoint are deleted before the next
depth. The last lines give the growth per layer and per added parameter, the extrapolation to Lucie-7B (linear
in the parameter count), the ratio of the larger to the smaller depth's figures, and the streamed weights-only
import's memory as a fraction of the in-memory one's:

    .venv/bin/python bench/import_universal.py [--workdir DIR] [--layers 2 4] [--width-divisor 1]
        [--commands import "import --weights-only" "in-memory --weights-only" export]

Disk: the checkpoint of the largest depth plus one output at a time (about 36 GB at 4 layers with the full import,
whose output holds bf16 weights and 3 fp32 tensors per parameter; about 18.5 GB without it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from lucie_nemo.memory_estimate import total_parameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from child_peak import measure  # noqa: E402

GIB = 2**30
TOKENIZER = ROOT.parent / "shared" / "lucie" / "tokenizer"


def run_child(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process (bench/child_peak.py); its output goes to ``log``."""
    run = measure(command, log, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    if run.exit_code != 0:
        raise SystemExit(f"{' '.join(command)} failed: see {log}")
    return run.seconds, run.peak_rss / GIB


def shape_of(layers: int, divisor: int):
    """Lucie-7B's widths (divided by ``divisor``, the vocabulary kept) with ``layers`` layers."""
    from dataclasses import replace

    from universal_fixture import full_width

    shape = full_width(layers)
    return replace(shape, hidden_size=shape.hidden_size // divisor, ffn_hidden_size=shape.ffn_hidden_size // divisor,
                   num_attention_heads=shape.num_attention_heads // divisor,
                   num_query_groups=max(1, shape.num_query_groups // divisor))


def bench_depth(layers: int, workdir: Path, tokenizer: Path, divisor: int, names: list[str]) -> dict[str, tuple[float, float]]:
    from universal_fixture import write_universal

    source = workdir / f"universal_{layers}L"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    started = time.perf_counter()
    shape = shape_of(layers, divisor)
    write_universal(source, shape, iteration=5_000, std=0.02)
    print(f"{layers} layers ({total_parameters(shape) / 1e6:.1f} M parameters): wrote the universal checkpoint in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    lucie = [sys.executable, "-m", "lucie_nemo.cli"]
    commands = {
        "import": [*lucie, "import", str(source), str(workdir / "imported"), "--no-progress"],
        "import --weights-only": [*lucie, "import", str(source), str(workdir / "imported"), "--weights-only",
                                  "--no-progress"],
        "in-memory --weights-only": [sys.executable, str(ROOT / "tests" / "in_memory_import.py"), "universal",
                                     str(source), str(workdir / "imported")],
        "export": [*lucie, "export", str(source), str(workdir / "exported"), "--tokenizer", str(tokenizer), "--no-progress"],
    }
    results = {}
    try:
        for name in names:
            command = commands[name]
            results[name] = run_child(command, workdir / f"{layers}L_{name.replace(' ', '_')}.log")
            print(f"{layers} layers  {name:22s} {results[name][0]:8.1f} s  {results[name][1]:6.2f} GiB peak RSS, "
                  f"{results[name][1] * GIB / total_parameters(shape):.1f} bytes per parameter", flush=True)
            shutil.rmtree(workdir / "imported", ignore_errors=True)
            shutil.rmtree(workdir / "exported", ignore_errors=True)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lucie-bench-universal"))
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 4])
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--width-divisor", type=int, default=1)
    names = ["import", "import --weights-only", "in-memory --weights-only", "export"]
    parser.add_argument("--commands", nargs="+", default=names, choices=names)
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    small, large = options.layers
    figures = {depth: bench_depth(depth, options.workdir, options.tokenizer, options.width_divisor, options.commands)
               for depth in (small, large)}
    sizes = {depth: total_parameters(shape_of(depth, options.width_divisor)) for depth in (small, large)}
    lucie = total_parameters(shape_of(32, 1))
    for name in figures[small]:
        (t_small, m_small), (t_large, m_large) = figures[small][name], figures[large][name]
        per_parameter = (m_large - m_small) * GIB / (sizes[large] - sizes[small])  # bytes each added parameter costs
        print(f"{name:22s} {(m_large - m_small) / (large - small):+.3f} GiB per layer of this width, "
              f"{per_parameter:.1f} bytes per added parameter; Lucie-7B ({lucie / 1e9:.2f} B parameters, "
              f"extrapolated linearly in parameters): {m_small + per_parameter * (lucie - sizes[small]) / GIB:.1f} GiB; "
              f"ratio {large}/{small} layers: time {t_large / t_small:.2f}, memory {m_large / m_small:.2f}")
    if {"import --weights-only", "in-memory --weights-only"} <= set(figures[small]):
        for depth in (small, large):
            streamed, in_memory = (figures[depth][name][1] for name in ("import --weights-only", "in-memory --weights-only"))
            print(f"{depth} layers: weights-only import streamed / in memory peak RSS {streamed / in_memory:.2f} "
                  f"({streamed:.2f} / {in_memory:.2f} GiB)")

if __name__ == "__main__":
    main()
