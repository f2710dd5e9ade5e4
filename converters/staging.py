"""Write an output folder under a temporary name beside it, check it, then rename it into place."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from lucie_nemo.errors import UserError


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; rename it to ``out`` when the block succeeds.

    ``out`` must not exist (or be an empty folder): stale files of an earlier output never mix in.
    The temporary folder is removed in every case.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder: remove it or choose another output")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
