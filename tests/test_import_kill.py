"""`lucie import` killed with SIGKILL at several moments, each rerun continuing where the last stopped: the files of
an uninterrupted import, and no tensor written twice.

The killed runs are subprocesses (tests/import_killed.py) of the weights-only import of the tiny universal
checkpoint; each kills itself at one moment (while a tensor file is open, after one is synced but before the
journal says so, before torch's ``.metadata``, before the final rename). The last rerun runs here; a rerun with
another source is refused.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from test_import_universal import _app
from universal_fixture import tiny_universal

ROOT = Path(__file__).resolve().parents[1]
KILLS = [("produce", 4), ("record", 9), ("metadata", 1), ("rename", 1)]  # in this order, each resuming the last


def _killed(moment: str, n: int, universal: Path, out: Path) -> None:
    command = [sys.executable, str(ROOT / "tests" / "import_killed.py"), moment, str(n), str(universal), str(out),
               "--weights-only", "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=600, start_new_session=True)
    assert result.returncode == -9, (moment, result.returncode, result.stderr[-3000:])


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; ``.metadata`` as its index and chunk metadata (its save id is drawn anew by each run),
    and the work folder's name, written in run_config.yaml and .metadata, as OUT."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes().replace(str(folder.parent).encode(), b"PARENT")
        if path.name == ".metadata":
            metadata = pickle.loads(path.read_bytes())
            data = repr((metadata.state_dict_metadata, metadata.storage_data)).encode()
        files[str(path.relative_to(folder))] = data
    return files


def test_killed_imports_rerun_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    from typer.testing import CliRunner

    from converters.universal.checkpoint import UniversalCheckpoint

    universal = tiny_universal(tmp_path / "universal" / "global_step3", 3)
    out = tmp_path / "killed" / "ckpt"
    for moment, n in KILLS:
        _killed(moment, n, universal, out)
        assert not out.exists() and (out.parent / ".ckpt.partial").is_dir(), moment
        if moment == KILLS[0][0]:  # a rerun with another source is refused, and leaves the work alone
            other = tiny_universal(tmp_path / "other" / "global_step3", 3)
            result = CliRunner().invoke(_app(), ["import", str(other), str(out), "--weights-only", "--no-progress"])
            assert result.exit_code == 2 and result.output.startswith("error: ") and \
                "holds an interrupted run with another source" in result.output, result.output
    journal = [line.split("\t")[0] for line in (out.parent / ".ckpt.resume" / "written").read_text().splitlines()]
    files = sorted(path.name for path in (out.parent / ".ckpt.partial").rglob("*.distcp"))
    assert sorted(journal) == files and len(files) == 17 + 9  # tensor chunks; extra states and the common state

    reads = []
    original_read = UniversalCheckpoint.read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UniversalCheckpoint, "read", lambda self, *a: reads.append(a) or original_read(self, *a))
        result = CliRunner().invoke(_app(), ["import", str(universal), str(out), "--weights-only", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert reads == []  # every tensor file was there: none read again
    assert not (out.parent / ".ckpt.partial").exists() and not (out.parent / ".ckpt.resume").exists()

    reference = tmp_path / "uninterrupted" / "ckpt"
    result = CliRunner().invoke(_app(), ["import", str(universal), str(reference), "--weights-only", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert _files(out) == _files(reference)
