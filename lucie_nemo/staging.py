"""Write an output folder under a temporary name beside it, and put it in place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
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
