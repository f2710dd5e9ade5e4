"""Wall time and peak RSS of `lucie import --weights-only` and `lucie export` on universal checkpoints of 2 and 4
full-width Lucie-7B layers (hidden 4,096, FFN 12,288, 32 heads, 8 key-value heads, vocabulary 65,024).

For each depth, a synthetic universal checkpoint in the released format is written under the work folder
(tests/universal_fixture.py: fp32, exp_avg and exp_avg_sq of every parameter; 2 layers: 11 GB, 4 layers:
15.7 GB), then each command runs in a fresh child process (imports included), its peak RSS taken from the
kernel (wait4's ru_maxrss); outputs and the checkpoint are deleted before the next depth. The last lines
give the per-layer growth and the extrapolation to Lucie-7B's 32 layers (linear in depth), and the ratio of
the 4-layer to the 2-layer figures:

    .venv/bin/python bench/import_universal.py [--workdir DIR] [--layers 2 4]

Disk: the checkpoint of the largest depth plus one output at a time (about 18.5 GB at 4 layers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
GIB = 2**30
TOKENIZER = ROOT.parent / "shared" / "lucie" / "tokenizer"


def run_child(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process; its output goes to ``log``."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: see {log}")
    return seconds, usage.ru_maxrss * 1024 / GIB


def bench_depth(layers: int, workdir: Path, tokenizer: Path) -> dict[str, tuple[float, float]]:
    from universal_fixture import full_width, write_universal

    source = workdir / f"universal_{layers}L"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    started = time.perf_counter()
    write_universal(source, full_width(layers), iteration=5_000, std=0.02)
    print(f"{layers} layers: wrote the universal checkpoint in {time.perf_counter() - started:.0f} s", flush=True)
    lucie = [sys.executable, "-m", "lucie_nemo.cli"]
    commands = {
        "import --weights-only": [*lucie, "import", str(source), str(workdir / "imported"), "--weights-only"],
        "export": [*lucie, "export", str(source), str(workdir / "exported"), "--tokenizer", str(tokenizer), "--no-progress"],
    }
    results = {}
    try:
        for name, command in commands.items():
            results[name] = run_child(command, workdir / f"{layers}L_{name.split()[0]}.log")
            print(f"{layers} layers  {name:22s} {results[name][0]:8.1f} s  {results[name][1]:6.2f} GiB peak RSS", flush=True)
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
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    small, large = options.layers
    figures = {depth: bench_depth(depth, options.workdir, options.tokenizer) for depth in (small, large)}
    for name in figures[small]:
        (t_small, m_small), (t_large, m_large) = figures[small][name], figures[large][name]
        per_layer_t, per_layer_m = (t_large - t_small) / (large - small), (m_large - m_small) / (large - small)
        print(f"{name:22s} per layer: {per_layer_t:+.1f} s, {per_layer_m:+.3f} GiB; "
              f"32 layers (extrapolated): {t_small + per_layer_t * (32 - small):.0f} s, "
              f"{m_small + per_layer_m * (32 - small):.2f} GiB; "
              f"ratio {large}/{small} layers: time {t_large / t_small:.2f}, memory {m_large / m_small:.2f}")


if __name__ == "__main__":
    main()
