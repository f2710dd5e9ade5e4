"""The main job's path, shortened: corpus -> tokenizer -> data -> 3 phases -> export -> verify -> generate."""

from __future__ import annotations

import ast
import re
import subprocess
import sys


def _demo(workdir) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lucie_nemo.cli", "demo", "--fast", "--workdir", str(workdir), "--corpus-mb", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _rows(summary: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in summary.splitlines()
            if line.split() and line.split()[0] in ("pretrain", "extension", "anneal")}


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    first = _demo(tmp_path)
    rows = _rows(first.stdout)
    assert [rows[phase][1] for phase in ("pretrain", "extension", "anneal")] == ["60", "6", "6"]
    first_loss, last_loss = float(rows["pretrain"][3]), float(rows["pretrain"][4])
    assert first_loss > 8.5  # about ln(8192) = 9.0 at initialisation
    assert first_loss - last_loss > 1.0, f"loss did not fall clearly in phase 1: {first_loss} -> {last_loss}"
    assert "revisions (4): step0000050, step0000060, extension_step0000006, annealing_step0000006" in first.stdout
    assert re.search(r"parity \(annealing_step0000006\): OK - max abs difference", first.stdout)
    assert (tmp_path / "runs" / "pretrain" / "tensorboard").is_dir()
    # the last line: `lucie report` of the demo's runs, written, with the runs on their (truncated) plan
    assert first.stdout.rstrip().splitlines()[-1] == (
        f"run report (0 deviations from the plan): {tmp_path / 'runs' / 'report' / 'report.png'}")
    assert (tmp_path / "runs" / "report" / "report.md").is_file()
    for revision in ("step0000050", "step0000060", "extension_step0000006", "annealing_step0000006"):
        assert (tmp_path / "hub" / revision / "model.safetensors.index.json").is_file()
    continuations = re.findall(r"^  '.*' -> (.*)$", first.stdout, re.MULTILINE)
    assert len(continuations) == 3
    words = {word for text in map(ast.literal_eval, continuations) for word in re.findall(r"[^\W\d_]{2,}", text)}
    assert len(words) >= 3, continuations  # words, not only newlines or one repeated token

    second = _demo(tmp_path)
    assert [row[5] for row in _rows(second.stdout).values()] == ["reused"] * 3
