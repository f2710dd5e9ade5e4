"""bench/gpu_check.sh's training stage (bench/gpu_train_check.py) on a CPU, at a 64-wide model: the same
`lucie train pretrain` / `lucie export` / `lucie verify` path the H200 ran at full width, kept runnable here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_train_export_verify_stage_runs_and_checks_its_results(tmp_path):
    result = subprocess.run([sys.executable, REPO / "bench" / "gpu_train_check.py", "--workdir", tmp_path,
                             "--layers", "2", "--steps", "10", "--tiny-width"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"train: 10 steps of 2 layers on the CPU in \d+ s", lines[0])
    first, last = map(float, re.search(r"first five steps ([\d.]+), last five ([\d.]+)", lines[1]).groups())
    assert last < first
    assert lines[3].startswith(f"export: iteration 10 -> {tmp_path / 'exported'}")
    assert re.match(r"verify: max abs difference \S+ \(tolerance 0.001\): match", lines[4])
    run = tmp_path / "runs" / "pretrain" / "checkpoints"
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "10"


def test_the_check_script_parses():
    assert subprocess.run(["bash", "-n", REPO / "bench" / "gpu_check.sh"]).returncode == 0
