"""`lucie prepare-data` killed with SIGKILL in the middle of a file, then rerun: the bytes of an uninterrupted run.

The command runs as a subprocess (one tokenizer worker) over three JSON-lines files, the middle one about 3 MB
(a dozen 256 KB chunks). The test polls the work folder until the middle file's shard has its first tokens
on disk, then kills the whole process group. From that state it checks the refusal of a resume with other
inputs, the merge check (a finished shard damaged behind its done marker), and the rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from conftest import needs_shared
from typer.testing import CliRunner

from lucie_nemo.data.prepare import PrepareConfig, prepare_data

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
pytestmark = needs_shared

SENTENCES = [
    "Quelle est la capitale de la France ? Paris, « bien sûr » (à 14 h 30).",
    "The quick brown fox (aged 7) jumps over 1,234 lazy dogs; 'quoted' [sic].",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein – „so“ heißt es.",
    "def f(x: int) -> dict[str, list[int]]:\n\treturn {'a': [x, 0x1F]}  # 😀",
]


def write_inputs(folder: Path) -> list[Path]:
    """40 + 300 + 40 documents; the middle file (300 documents of ~10 KB) is the one killed mid-way."""
    paths = []
    for name, count, repeats in (("first", 40, 3), ("middle", 300, 140), ("last", 40, 3)):
        lines = []
        for i in range(count):
            body = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(repeats + i % 7))
            lines.append(json.dumps({"text": f"{name} {i}: {body}"}, ensure_ascii=False))
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def command(inputs: list[Path], prefix: Path) -> list[str]:
    lucie = Path(sys.executable).with_name("lucie")
    return [str(lucie), "prepare-data", *map(str, inputs), "--tokenizer", str(TOKENIZER),
            "--output-prefix", str(prefix), "--workers", "1", "--no-progress"]


def invoke(arguments: list[str]):
    """The same command in this process (no second start-up of torch for the runs after the kill)."""
    from lucie_nemo.cli.data import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, arguments[1:])


def kill_mid_file(inputs: list[Path], prefix: Path) -> Path:
    """Start the command, SIGKILL it once the middle file's shard holds tokens; return the work folder."""
    work = Path(f"{prefix}.parts")
    shard = work / "00001-all.tmp.bin"
    process = subprocess.Popen(command(inputs, prefix), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not (shard.exists() and shard.stat().st_size > 0):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the middle file's shard never got tokens (exit {process.poll()}): {process.stderr.read()}")
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker, as the OOM killer or a node loss would
    process.wait(timeout=60)
    process.stderr.close()
    return work


def test_sigkill_mid_file_then_rerun_gives_the_uninterrupted_bytes(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    straight = tmp_path / "straight" / "corpus"
    prepare_data(PrepareConfig(tuple(inputs), str(TOKENIZER), straight, workers=1, progress=False))

    prefix = tmp_path / "killed" / "corpus"
    work = kill_mid_file(inputs, prefix)
    done = sorted(path.name for path in work.glob("*.done.json"))
    assert done == ["00000.done.json"], f"not killed in the middle file: {done}"
    assert not Path(f"{prefix}.bin").exists() and not Path(f"{prefix}.tmp.bin").exists()

    # Resuming with other inputs is refused with one error line, and the work folder is kept.
    other = command(inputs[:2], prefix)
    result = invoke(other)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {work} holds an interrupted run with other inputs: rerun with the same inputs and options to "
        f"resume it, or delete {work} to start over"]
    assert sorted(path.name for path in work.glob("*.done.json")) == done

    # A copy of the killed state whose finished shard loses its last token, for the merge check below.
    damaged = tmp_path / "damaged" / "corpus"
    damaged_work = Path(f"{damaged}.parts")
    shutil.copytree(work, damaged_work)
    with open(damaged_work / "00000-all.bin", "r+b") as shard:
        shard.truncate(shard.seek(0, os.SEEK_END) - 2)

    # The first file rewritten behind its fingerprint (same size, same mtime): a resume that keeps the
    # finished shard still gives the uninterrupted bytes; one that redoes the file would not.
    first = inputs[0]
    stat = first.stat()
    lines = first.read_text().splitlines(keepends=True)
    first.write_text("".join(reversed(lines)))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    rerun = invoke(command(inputs, prefix))
    assert rerun.exit_code == 0, rerun.output
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{straight}{suffix}").read_bytes(), suffix
    assert json.loads(Path(f"{prefix}.stats.json").read_text())["documents"] == 380
    assert not work.exists()

    # The merge check refuses the copy whose finished shard lost its last token.
    result = invoke(command(inputs, damaged))
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: merged dataset {damaged}.tmp has ")
    assert line.endswith(f"the shards in {damaged_work} do not match their done markers: delete {damaged_work} "
                         "and rerun")
    assert sorted(path.name for path in damaged.parent.iterdir()) == ["corpus.parts"]  # no output, no temporary
