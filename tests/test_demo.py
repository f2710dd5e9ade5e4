"""The main job's path, shortened: corpus -> tokenizer -> data -> 3 phases -> export -> verify -> generate."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from fake_hub import FakeHub


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

    _publishes_under_its_own_revision(tmp_path / "hub" / "annealing_step0000006", tmp_path / "hf_home")

    second = _demo(tmp_path)
    assert [row[5] for row in _rows(second.stdout).values()] == ["reused"] * 3


def _publishes_under_its_own_revision(export: Path, hf_home: Path) -> None:
    """`lucie publish EXPORT --repo ...` (no --revision) to tests/fake_hub.py: the branch is the demo run's own
    revision and holds the folder byte for byte (the run's 72 steps are no step of Lucie-7B's schedule)."""
    def sha256s(files: dict[str, bytes]) -> dict[str, str]:
        return {path: hashlib.sha256(content).hexdigest() for path, content in files.items() if path != ".gitattributes"}

    with FakeHub() as hub:
        env = {**os.environ, "HF_TOKEN": hub.token, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1"}
        command = [sys.executable, "-m", "lucie_nemo.cli", "publish", str(export), "--repo", "lucie-tests/demo", "--endpoint", hub.url]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "branch annealing_step0000006" in result.stdout
        folder = {p.relative_to(export).as_posix(): p.read_bytes() for p in export.rglob("*") if p.is_file()}
        assert sha256s(hub.files("lucie-tests/demo", "annealing_step0000006")) == sha256s(folder)
