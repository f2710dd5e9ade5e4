"""Wall time and peak RSS of one command in a fresh process: the kernel's figure for that process alone.

A process started by vfork (Python's subprocess, posix_spawn) begins its ru_maxrss at its parent's peak RSS: at
exec the kernel keeps the high-water mark of the address space it replaces. A bench whose parent once held
gigabytes (writing a synthetic checkpoint, comparing two outputs) would report them for every command it runs
next. So ``measure`` starts the command through this file run as a launcher (``python -S``: standard library
only, about 10 MB), which waits for it, reports its ru_maxrss, and kills it if its RSS (sampled every 50 ms) passes
a cap:

    python -S bench/child_peak.py RESULT_JSON CAP_BYTES COMMAND...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes
    exit_code: int  # negative: killed by that signal
    killed_at: int | None  # the RSS in bytes at which the cap killed it
    output: str | None  # its standard output, when captured


def measure(command: list[str], log: Path | None = None, cap: int | None = None, capture: bool = False,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run ``command`` to its end (or past ``cap`` bytes of RSS) in a fresh process; its output goes to ``log``
    (standard error with it), or is returned with ``capture``, or is inherited."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        launcher = [sys.executable, "-S", __file__, str(result), str(cap or 0), *command]
        with open(log, "w") if log else contextlib.nullcontext() as out:
            child = subprocess.Popen(launcher, stdout=subprocess.PIPE if capture else out,
                                     stderr=subprocess.STDOUT if log else None, text=True, env=env, cwd=cwd)
            output = child.communicate()[0]
        if not result.is_file():
            raise SystemExit(f"the launcher of {' '.join(command)} failed (exit {child.returncode})")
        figures = json.loads(result.read_text())
    return Measured(figures["seconds"], figures["peak_rss"], figures["exit_code"], figures["killed_at"], output)


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _launch(result: Path, cap: int, command: list[str]) -> None:
    start = time.monotonic()
    child = subprocess.Popen(command)
    sampled, killed_at = 0, None
    while True:
        done, status, usage = os.wait4(child.pid, os.WNOHANG)
        if done:
            break
        rss = _rss(child.pid)
        sampled = max(sampled, rss)
        if cap and rss > cap and killed_at is None:
            os.kill(child.pid, signal.SIGKILL)
            killed_at = rss
        time.sleep(SAMPLE_SECONDS)
    figures = {"seconds": time.monotonic() - start, "peak_rss": max(sampled, usage.ru_maxrss * 1024),
               "exit_code": os.waitstatus_to_exitcode(status), "killed_at": killed_at}
    result.write_text(json.dumps(figures))


if __name__ == "__main__":
    _launch(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
