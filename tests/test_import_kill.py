"""`lucie import` killed with SIGKILL at several moments, each rerun continuing where the last stopped: the files of
an uninterrupted import, no tensor written twice and no file downloaded twice.

The killed runs are subprocesses (tests/import_killed.py) of the three imports (the weights of the tiny universal
checkpoint, its full state with Adam's, a tiny Hugging Face folder); each kills itself at one moment (while a tensor
file is open, after one is synced but before the journal says so, before torch's ``.metadata``, before the final
rename). The last rerun runs here; a rerun with another source is refused. A Hub import (the fake Hub: the real
one cannot be reached from the tests) is killed in the middle of a file's download, then while writing, and its
reruns download only what was missing, through huggingface_hub.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from converters_fixtures import write_random_hf
from test_import_universal import _app
from universal_fixture import tiny_universal

ROOT = Path(__file__).resolve().parents[1]
KILLS = [("produce", 4), ("record", 9), ("metadata", 1), ("rename", 1)]  # in this order, each resuming the last
REPO, BRANCH = "OpenLLM-France/Lucie-tiny-optimizer-states", "step0000003"


@dataclass(frozen=True)
class Source:
    make: Callable[[Path, int], Path]  # (folder, seed) -> the source
    options: tuple[str, ...]
    reader: tuple[str, str]  # (module.class, method): where each source tensor is read


def _universal(folder: Path, seed: int) -> Path:
    return tiny_universal(folder / "global_step3", 3, seed=seed)


SOURCES = {
    "universal weights": Source(_universal, ("--weights-only",), ("converters.universal.checkpoint.UniversalCheckpoint", "read")),
    "universal full state": Source(_universal, (), ("converters.universal.checkpoint.UniversalCheckpoint", "read")),
    "hugging face": Source(write_random_hf, (), ("converters.import_hf._SafetensorsFolder", "__call__")),
}


def _run(arguments: list[str], env: dict[str, str] | None = None, kill: tuple[str, int] | None = None):
    """`lucie import ARGUMENTS` in a subprocess (in a session of its own), killed at ``kill`` (moment, n)."""
    program = [str(ROOT / "tests" / "import_killed.py"), kill[0], str(kill[1])] if kill else ["-m", "lucie_nemo.cli", "import"]
    return subprocess.Popen([sys.executable, *program, *arguments], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _killed(moment: str, n: int, arguments: list[str], env: dict[str, str] | None = None) -> None:
    child = _run(arguments, env, (moment, n))
    output = child.communicate(timeout=600)[0]
    assert child.returncode == -9, (moment, child.returncode, output[-3000:])


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


def _import_here(arguments: list[str], watched: tuple[str, str] | None = None) -> list:
    """`lucie import ARGUMENTS` in this process; the reads of ``watched`` (module.class, method) it made."""
    import importlib

    from typer.testing import CliRunner

    reads = []
    with pytest.MonkeyPatch.context() as patch:
        if watched:
            module, _, owner_name = watched[0].rpartition(".")
            owner = getattr(importlib.import_module(module), owner_name)
            original = getattr(owner, watched[1])
            patch.setattr(owner, watched[1], lambda self, *a: reads.append(a) or original(self, *a))
        result = CliRunner().invoke(_app(), ["import", *arguments, "--no-progress"])
    assert result.exit_code == 0, result.output
    return reads


@pytest.mark.parametrize("kind", SOURCES)
def test_killed_imports_rerun_to_the_bytes_of_an_uninterrupted_one(kind, tmp_path):
    from typer.testing import CliRunner

    source = SOURCES[kind]
    origin = source.make(tmp_path / "source", 0)
    reference = tmp_path / "uninterrupted" / "ckpt"
    _import_here([str(origin), str(reference), *source.options])

    out = tmp_path / "killed" / "ckpt"
    arguments = [str(origin), str(out), *source.options, "--no-progress"]
    for moment, n in KILLS:
        _killed(moment, n, arguments)
        assert not out.exists() and (out.parent / ".ckpt.partial").is_dir(), moment
        if moment == KILLS[0][0]:  # a rerun with another source is refused, and leaves the work alone
            other = source.make(tmp_path / "other", 1)
            result = CliRunner().invoke(_app(), ["import", str(other), str(out), *source.options, "--no-progress"])
            assert result.exit_code == 2 and result.output.startswith("error: ") and \
                "holds an interrupted run with another source" in result.output, result.output
    journal = [line.split("\t")[0] for line in (out.parent / ".ckpt.resume" / "written").read_text().splitlines()]
    files = sorted(path.name for path in (out.parent / ".ckpt.partial").rglob("*.distcp"))
    assert sorted(journal) == files and len(files) == len(list(reference.rglob("*.distcp")))

    assert _import_here([str(origin), str(out), *source.options], source.reader) == []  # none read again
    assert not (out.parent / ".ckpt.partial").exists() and not (out.parent / ".ckpt.resume").exists()
    assert _files(out) == _files(reference)


def _cached(cache: Path) -> set[str]:
    """The files of the branch that huggingface_hub's cache holds whole."""
    snapshots = cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    return {str(path.relative_to(folder)) for folder in snapshots.glob("*") for path in folder.rglob("*")
            if path.is_file()}


def _downloads(requests) -> list[str]:
    """The files the requests downloaded (GET), in order."""
    return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in requests  # after the branch or commit
            if r.method == "GET" and "/resolve/" in r.path]


def test_a_hub_import_killed_while_downloading_downloads_only_what_it_lacked(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from fake_hub import FakeHub

    universal = _universal(tmp_path / "universal", 0)
    files = {str(path.relative_to(universal)): path.read_bytes() for path in universal.rglob("*") if path.is_file()}
    largest = max(files, key=lambda name: len(files[name]))
    cache, out = tmp_path / "hf_home" / "hub", tmp_path / "killed" / "ckpt"
    with FakeHub() as hub:
        hub.seed(REPO, BRANCH, files)
        env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        arguments = [REPO, str(out), "--revision", BRANCH, "--endpoint", hub.url, "--weights-only", "--no-progress"]

        # 1. killed in the middle of the largest file, every other file downloaded
        cut = hub.interrupt(largest, len(files[largest]) // 2, hold=True)
        child = _run(arguments, env)
        assert cut.reached.wait(120), child.communicate(timeout=60)[0][-3000:]
        deadline = time.monotonic() + 120
        while _cached(cache) != set(files) - {largest} and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(60)
        cut.release.set()
        assert _cached(cache) == set(files) - {largest}
        assert len(list(cache.rglob("*.incomplete"))) == 1  # the killed download's partial file

        # 2. rerun: the largest file alone downloaded again, resumed by huggingface_hub from what it had written
        # (whole chunks) when its connection drops at a third; the killed run's partial file removed; killed
        # while writing
        third = len(files[largest]) // 3
        hub.interrupt(largest, third)
        before = len(hub.requests)
        _killed("record", 3, arguments, env)
        assert _downloads(hub.requests[before:]) == [largest, largest]
        resumed = [r for r in hub.requests[before:] if r.method == "GET" and r.range]
        assert len(resumed) == 1 and resumed[0].status == 206 and resumed[0].range.endswith("-")
        assert 0 < int(resumed[0].range.removeprefix("bytes=")[:-1]) <= third
        assert _cached(cache) == set(files) and not list(cache.rglob("*.incomplete"))

        # 3. the last rerun downloads nothing and writes the bytes of an uninterrupted import
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setenv("HF_TOKEN", hub.token)
        before = len(hub.requests)
        _import_here(arguments[:-1])
        assert _downloads(hub.requests[before:]) == []
    reference = tmp_path / "uninterrupted" / "ckpt"
    _import_here([str(universal), str(reference), "--weights-only"])
    assert _files(out) == _files(reference)
