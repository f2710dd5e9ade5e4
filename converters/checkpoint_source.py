"""Open a checkpoint that ``lucie export`` and ``lucie verify`` read: a folder, or a ``.nemo`` file read in place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from converters import nemo_file
from converters.megatron_reader import CheckpointInfo, locate


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[CheckpointInfo]:
    """The checkpoint at ``path``, readable while the block runs."""
    if nemo_file.is_nemo_file(path):
        with nemo_file.opened(path) as info:
            yield info
    else:
        yield locate(path)
