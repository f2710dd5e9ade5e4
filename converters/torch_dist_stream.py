"""Write a ``torch_dist`` checkpoint whose tensors are produced one at a time, on demand.

``torch.distributed.checkpoint.save`` (which Megatron's ``torch_dist`` format is) wants every tensor of the
checkpoint in a state dict. Its writer, though, asks its planner for each tensor only when it writes it
(``resolve_data``): a planner that hands over a ready plan and produces each tensor on that call writes a
checkpoint of any size holding one tensor at a time. Everything else is torch's own writer and metadata.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemWriter, save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, WriteItem

from lucie_nemo.errors import UserError

Produce = Callable[[WriteItem], "torch.Tensor | io.BytesIO"]


class _StreamingSavePlanner(DefaultSavePlanner):
    """torch's default planner (global plan, metadata, chunk validation) over a given plan, producing each
    item's data when the writer asks for it."""

    def __init__(self, items: list[WriteItem], produce: Produce):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items, self._produce = items, produce

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        return self._produce(write_item)


def write_streamed(folder: Path, items: list[WriteItem], produce: Produce) -> None:
    """Write the checkpoint of ``items`` into ``folder``, ``produce(item)`` giving each item's tensor or bytes.

    A :class:`UserError` raised by ``produce`` comes out as itself, not wrapped by torch's checkpoint error.
    """
    # One file per item: torch's writer keeps a reference to every tensor of a file until the file is closed.
    writer = FileSystemWriter(folder, single_file_per_rank=False, thread_count=1)
    try:
        save({}, storage_writer=writer, planner=_StreamingSavePlanner(items, produce), no_dist=True)
    except CheckpointException as failure:
        for error, _ in failure.failures.values():
            if isinstance(error, UserError):
                raise error from None
        raise
