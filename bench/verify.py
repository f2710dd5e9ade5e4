"""Wall time and peak memory of `lucie verify` on the Lucie-7B-shaped checkpoint that bench/export.py builds.

    .venv/bin/python bench/export.py --skip-baseline     # once: builds the checkpoint (cached)
    .venv/bin/python bench/verify.py [--layers 32] [--workdir DIR] [--new-tokens 8]

Exports the checkpoint with `lucie export` into a temporary folder beside it, runs `lucie verify` on the
pair in a child process, prints its output, then its exit code, wall time and peak RSS (the kernel's
figure for that child alone, bench/child_peak.py), and deletes the export.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import child_peak  # bench/child_peak.py, beside this script
from export import COMPLETE, DEFAULT_WORKDIR, GIB, cache_folder  # bench/export.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="layers of the built checkpoint (default 32)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    cache = cache_folder(args.workdir.expanduser(), args.layers)
    if not (cache / COMPLETE).is_file():
        raise SystemExit(f"no built checkpoint in {cache}: run `bench/export.py --layers {args.layers} "
                         f"--skip-baseline` first")
    checkpoint = cache / "checkpoint"
    lucie = [sys.executable, "-m", "lucie_nemo.cli"]
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        exported = Path(scratch) / "hf"
        subprocess.run([*lucie, "export", str(checkpoint), str(exported), "--phase", "pretrain"], check=True)
        verify = child_peak.measure([*lucie, "verify", str(checkpoint), str(exported), "--new-tokens",
                                     str(args.new_tokens)], capture=True)  # this child's own peak RSS
    print(verify.output, end="")
    print(f"lucie verify ({args.layers} layers): exit {verify.exit_code}, {verify.seconds:.0f} s, "
          f"peak RSS {verify.peak_rss / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
