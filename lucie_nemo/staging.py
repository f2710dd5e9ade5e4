"""Write an output folder under a temporary name beside it, and put it in place only when complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lucie_nemo.errors import UserError


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, *, replace_files: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds, it becomes ``out``.

    ``out`` must not exist or be an empty folder, so stale files of an earlier output never mix in;
    with ``replace_files``, an existing folder (a model folder receiving its tokenizer) keeps its other
    files and each staged file replaces its namesake by one rename. The temporary folder is removed
    in every case.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose a new or existing folder as output")
    if out.is_dir() and any(out.iterdir()) and not replace_files:
        raise UserError(f"{out} already exists and is not an empty folder: remove it or choose another output")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out.is_dir() and any(out.iterdir()):
            for file in staging.iterdir():
                os.replace(file, out / file.name)
        else:
            if out.is_dir():
                out.rmdir()
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class ResumableFolder:
    """The work folder of an output (``.OUT.partial`` beside it), and the folder of what resuming needs
    (``.OUT.resume``: the manifest, and what its user keeps there)."""

    path: Path
    state: Path


@contextlib.contextmanager
def resumable_folder(out: str | os.PathLike, manifest: dict) -> Iterator[ResumableFolder]:
    """Like :func:`staged_folder`, but the work folder has a fixed name and is kept when the process is killed or
    the block fails (but by a UserError, a bad input: then both folders are removed): a later call with the same
    ``manifest`` (what the output is made of) continues in it, one with another is refused. When the block
    succeeds, the work folder becomes ``out`` and the state is removed."""
    out = Path(out)
    work = ResumableFolder(out.parent / f".{out.name}.partial", out.parent / f".{out.name}.resume")
    manifest_path = work.state / "manifest.json"
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not work.path.exists():
            shutil.rmtree(work.state, ignore_errors=True)  # killed after the output was put in place
        raise UserError(f"{out} already exists and is not an empty folder: remove it or choose another output")
    if not manifest_path.is_file():  # new, or killed before anything was written
        shutil.rmtree(work.path, ignore_errors=True)
        work.state.mkdir(parents=True, exist_ok=True)
        (work.state / "manifest.json.tmp").write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(work.state / "manifest.json.tmp", manifest_path)
    previous = json.loads(manifest_path.read_text())
    changed = sorted(key for key in manifest.keys() | previous.keys() if previous.get(key) != manifest.get(key))
    if changed:
        raise UserError(f"{work.path} holds an interrupted run with another {', '.join(changed)}: rerun that "
                        f"command to finish it, or delete {work.path} and {work.state} to start over")
    work.path.mkdir(exist_ok=True)
    try:
        yield work
    except UserError:  # bad input: refused as a whole, nothing kept (a kill or a crash keeps the work)
        shutil.rmtree(work.path, ignore_errors=True)
        shutil.rmtree(work.state, ignore_errors=True)
        raise
    if out.is_dir():
        out.rmdir()
    work.path.rename(out)
    shutil.rmtree(work.state)
