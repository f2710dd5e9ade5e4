"""bench/child_peak.py, which every benchmark's peak RSS comes from: a command's own peak, not its parent's, and the
memory cap that stops a runaway baseline."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from child_peak import measure  # noqa: E402

MIB = 2**20
ALLOCATE = "import sys, time; block = b'x' * (int(sys.argv[1]) * 2**20); print('allocated'); time.sleep(0.3)"


def test_a_command_reports_its_own_peak_not_the_one_its_parent_reached_before():
    held = b"x" * (1024 * MIB)  # this process's peak: at least 1 GiB, which a vfork'd child would start from
    del held
    run = measure([sys.executable, "-c", ALLOCATE, "200"], capture=True)
    assert 200 * MIB < run.peak_rss < 400 * MIB, run.peak_rss / MIB
    assert run.exit_code == 0 and run.output == "allocated\n" and run.killed_at is None


def test_a_command_past_the_cap_is_killed_and_its_rss_reported(tmp_path):
    run = measure([sys.executable, "-c", ALLOCATE + "; time.sleep(5)", "600"], tmp_path / "child.log", cap=300 * MIB)
    assert run.exit_code == -9 and 300 * MIB < run.killed_at <= run.peak_rss and run.seconds < 5
