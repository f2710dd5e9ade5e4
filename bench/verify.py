"""Wall time and peak memory of `lucie verify` on the Lucie-7B-shaped checkpoint that bench/export.py builds.

    .venv/bin/python bench/export.py --skip-baseline     # once: builds the checkpoint (cached)
    .venv/bin/python bench/verify.py [--layers 32] [--workdir DIR] [--new-tokens 8]

Exports the checkpoint with `lucie export` into a temporary folder beside it, runs `lucie verify` on the
pair in a child process, prints its output, then its exit code, wall time and peak RSS (the kernel's
figure for that child), and deletes the export.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        start = time.monotonic()
        verify = subprocess.Popen([*lucie, "verify", str(checkpoint), str(exported), "--new-tokens",
                                   str(args.new_tokens)], stdout=subprocess.PIPE, text=True)
        output = verify.stdout.read()
        _, status, usage = os.wait4(verify.pid, 0)  # this child's own peak RSS, not the export's
        verify.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
    print(output, end="")
    print(f"lucie verify ({args.layers} layers): exit {verify.returncode}, {seconds:.0f} s, "
          f"peak RSS {usage.ru_maxrss * 1024 / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
