"""Write a ``torch_dist`` checkpoint whose tensors are produced one at a time, on demand, resumably.

``torch.distributed.checkpoint.save`` (which Megatron's ``torch_dist`` format is) wants every tensor of the
checkpoint in a state dict. Its writer, though, asks its planner for each tensor only when it writes it
(``resolve_data``): a planner that hands over a ready plan and produces each tensor on that call writes a
checkpoint of any size holding one tensor at a time. Everything else is torch's own writer and metadata.

Resuming: each item goes to a file of its own, and a journal records each file once torch's writer has synced and
closed it. A rerun into the same folder with the same plan gives every file its same name; a file the journal
holds is not written again and its item not produced: torch's writer serializes an empty tensor of the item's
shape and dtype into a sink that only counts the bytes (the length its metadata records, the same as the file's,
since ``torch.save`` writes the data after a header that depends on the shape and dtype alone).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemWriter, save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.planner import SavePlan, WriteItem, WriteItemType

from lucie_nemo.errors import UserError

Produce = Callable[[WriteItem], "torch.Tensor | io.BytesIO"]


def _key(item: WriteItem) -> str:
    """An item's name in the journal: its key and chunk offsets."""
    return f"{item.index.fqn}@{','.join(map(str, item.index.offset or ()))}"


class _Journal:
    """The files of the checkpoint known complete, one line each (``file<TAB>item``), appended when one is."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines(keepends=True):
                if line.endswith("\n"):  # a line cut by a kill is no record
                    name, item = line.rstrip("\n").split("\t")
                    self.done[name] = item

    def record(self, name: str, item: str) -> None:
        with open(self.path, "a") as file:
            file.write(f"{name}\t{item}\n")
            file.flush()
            os.fsync(file.fileno())
        self.done[name] = item


class _Sink(io.RawIOBase):
    """Counts what is written; syncs the finished file it stands for."""

    def __init__(self, existing: int):
        self.written, self.existing = 0, existing

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.written += size
        return size

    def tell(self) -> int:
        return self.written

    def fileno(self) -> int:
        return self.existing


@dataclass
class _Current:
    """The file torch's writer has open, whether the journal holds it, and the item written into it."""

    name: str
    done: bool
    items: list[str] = field(default_factory=list)


class _ResumingFileSystem(FileSystem):
    """torch's file system, recording each finished ``.distcp`` file and standing a sink for those recorded."""

    def __init__(self, journal: _Journal):
        super().__init__()
        self.journal = journal
        self.current: _Current | None = None

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        path = Path(path)
        if mode != "wb" or path.suffix != ".distcp":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        self.current = _Current(path.name, path.name in self.journal.done and path.is_file())
        if self.current.done:
            with open(path, "rb") as existing:
                yield _Sink(existing.fileno())
        else:
            with super().create_stream(path, mode) as stream:
                yield stream
            self.journal.record(path.name, " ".join(self.current.items))  # synced and closed by torch's writer


class _StreamingSavePlanner(DefaultSavePlanner):
    """torch's default planner (global plan, metadata, chunk validation) over a given plan, producing each
    item's data when the writer asks for it (a stand-in of the same size for an item already written)."""

    def __init__(self, items: list[WriteItem], produce: Produce, files: _ResumingFileSystem):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items, self._produce, self._files = items, produce, files

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        current, key = self._files.current, _key(write_item)
        if not current.done:
            current.items.append(key)
        elif self._files.journal.done[current.name] != key:
            raise RuntimeError(f"{current.name} holds {self._files.journal.done[current.name]} from the interrupted "
                               f"run, this run plans {key} there")
        elif write_item.type != WriteItemType.BYTE_IO:
            return torch.empty(write_item.tensor_data.chunk.sizes, dtype=write_item.tensor_data.properties.dtype)
        return self._produce(write_item)


def write_streamed(folder: Path, items: list[WriteItem], produce: Produce, journal: Path) -> None:
    """Write the checkpoint of ``items`` into ``folder``, ``produce(item)`` giving each item's tensor or bytes; the
    files that ``journal`` records as written by an interrupted run into ``folder`` are kept.

    A :class:`UserError` raised by ``produce`` comes out as itself, not wrapped by torch's checkpoint error.
    """
    # One file per item: torch's writer keeps a reference to every tensor of a file until the file is closed.
    writer = FileSystemWriter(folder, single_file_per_rank=False, thread_count=1)
    writer.fs = files = _ResumingFileSystem(_Journal(journal))
    try:
        save({}, storage_writer=writer, planner=_StreamingSavePlanner(items, produce, files), no_dist=True)
    except CheckpointException as failure:
        for error, _ in failure.failures.values():
            if isinstance(error, UserError):
                raise error from None
        raise
