"""A Megatron-Bridge checkpoint written at a model's real widths from a *template* of the same depth, heads and
vocabulary at a tiny width, one tensor at a time.

Megatron-Bridge writes the template (every key, chunk, dtype, byte item and non-tensor file of the real checkpoint);
its plan is scaled to the real widths (each chunk in proportion to its tensor) and written by
torch.distributed.checkpoint's own writer (converters/torch_dist_stream.py), each tensor read from the source only
when the writer asks for it. Used by the imports of universal checkpoints (weights only, or with the optimizer
state) and of Hugging Face folders.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType
from tqdm import tqdm

from converters.layout import EMBEDDING, FINAL_NORM, LAYER_TENSORS, OUTPUT_LAYER, megatron_shape
from converters.torch_dist_stream import write_streamed
from lucie_nemo.architecture import LucieShape

MODEL = "model"  # the weights' keys, beside the optimizer's "optimizer.state.<state>.<weight key>"
OPTIMIZER_PREFIX = "optimizer.state."
LAYERS_PREFIX = "decoder.layers."
_LAYER_SOURCE = {name: logical for logical, names in LAYER_TENSORS.items() for name in names}
_SOURCE_ORDER = [EMBEDDING, *LAYER_TENSORS, FINAL_NORM, OUTPUT_LAYER]  # the model's order, in which the writer reads
# The template's width: each attention head 4 wide, an FFN of 8 (its heads, query groups, depth and vocabulary are
# the real model's, so its keys and chunks are the real checkpoint's).
_TEMPLATE_HEAD_DIM, _TEMPLATE_FFN = 4, 8

# The tensor ``source`` (EMBEDDING, FINAL_NORM, OUTPUT_LAYER or a LAYER_TENSORS key) of ``layer`` in megatron-core's
# layout, of a source state (what ``states`` maps a checkpoint state to).
Read = Callable[[str, "int | None", str], torch.Tensor]


def template_shape(shape: LucieShape) -> LucieShape:
    """``shape`` at the template's width."""
    return replace(shape, hidden_size=shape.num_attention_heads * _TEMPLATE_HEAD_DIM, ffn_hidden_size=_TEMPLATE_FFN)


def split_key(key: str) -> tuple[str, str]:
    """(MODEL or the optimizer state, the weight's key) of a checkpoint key."""
    if key.startswith(OPTIMIZER_PREFIX):
        state, _, weight = key[len(OPTIMIZER_PREFIX):].partition(".")
        return state, weight
    return MODEL, key


def _source(weight: str) -> tuple[str, bool]:
    """(Megatron source, stacked over the layers) of a weight's checkpoint key."""
    if weight.startswith(LAYERS_PREFIX) and weight[len(LAYERS_PREFIX):] in _LAYER_SOURCE:
        return _LAYER_SOURCE[weight[len(LAYERS_PREFIX):]], True
    if weight in (EMBEDDING, FINAL_NORM, OUTPUT_LAYER):
        return weight, False
    raise RuntimeError(f"Megatron-Bridge wrote a tensor {weight!r} that this importer does not know")


def _whole_shape(source: str, stacked: bool, shape: LucieShape) -> tuple[int, ...]:
    """The whole shape of tensor ``source`` in the checkpoint of a model of ``shape`` (layers stacked first)."""
    return (shape.num_layers, *megatron_shape(shape, source)) if stacked else megatron_shape(shape, source)


def scaled_plan(template: Metadata, shape: LucieShape, states: list[str]) -> list[WriteItem]:
    """The write items of the template's checkpoint at ``shape``'s widths: each chunk's offsets and sizes scaled
    with its tensor, every key, dtype and byte item kept; in the model's order, the ``states`` of a weight together
    in that order (the writer reads each source tensor once)."""
    small_shape = template_shape(shape)
    items: list[tuple[tuple, WriteItem]] = []
    for key, stored in template.state_dict_metadata.items():
        if not isinstance(stored, TensorStorageMetadata):
            items.append(((-1,), WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO)))
            continue
        state, weight = split_key(key)
        source, stacked = _source(weight)
        small, expected = tuple(stored.size), _whole_shape(source, stacked, small_shape)
        if small != expected:
            raise RuntimeError(f"Megatron-Bridge wrote {key} as {small}, this importer expects {expected}")
        size = _whole_shape(source, stacked, shape)
        for chunk in stored.chunks:
            offsets = tuple(o * s // t for o, s, t in zip(chunk.offsets, size, small))
            sizes = tuple(n * s // t for n, s, t in zip(chunk.sizes, size, small))
            if any(o * s % t or n * s % t for o, n, s, t in zip(chunk.offsets, chunk.sizes, size, small)) or \
                    (stacked and chunk.sizes[0] != 1):
                raise RuntimeError(f"Megatron-Bridge split {key} as {chunk}: not in proportion to its shape")
            order = (_SOURCE_ORDER.index(source), offsets[0] if stacked else 0, states.index(state), offsets)
            data = TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
                                   properties=stored.properties, size=torch.Size(size))
            items.append((order, WriteItem(index=MetadataIndex(key, torch.Size(offsets)), type=WriteItemType.SHARD,
                                           tensor_data=data)))
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items]


class _Producer:
    """Each write item's data: the template's bytes, or a region of a source tensor, cast to the item's dtype (the
    last one read is kept: a weight's states and chunks come one after the other)."""

    def __init__(self, read: Read, states: dict[str, str], template: Path, template_metadata: Metadata, bar: tqdm):
        self.read, self.states, self.template, self.bar = read, states, template, bar
        self.stored = template_metadata.storage_data
        self.last: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, item: WriteItem) -> torch.Tensor | io.BytesIO:
        if item.type == WriteItemType.BYTE_IO:
            where = self.stored[item.index]
            with open(self.template / where.relative_path, "rb") as file:
                file.seek(where.offset)
                return io.BytesIO(file.read(where.length))
        state, weight = split_key(item.index.fqn)
        source, stacked = _source(weight)
        offsets, sizes = item.tensor_data.chunk.offsets, item.tensor_data.chunk.sizes
        wanted = (source, offsets[0] if stacked else None, self.states[state])
        if self.last is None or self.last[0] != wanted:
            self.last = None  # the previous tensor is freed before the next one is read
            self.last = (wanted, self.read(*wanted))
        region = self.last[1].unsqueeze(0) if stacked else self.last[1]
        starts = (0, *offsets[1:]) if stacked else offsets
        for dim, (start, size) in enumerate(zip(starts, sizes)):
            region = region.narrow(dim, start, size)
        self.bar.update()
        return region.to(item.tensor_data.properties.dtype).contiguous()


def _check_written(folder: Path, items: list[WriteItem]) -> None:
    """The written checkpoint's metadata holds every planned item, each tensor at its planned shape."""
    written = FileSystemReader(str(folder)).read_metadata()
    for item in items:
        shape = written.state_dict_metadata.get(item.index.fqn)
        if item.index not in written.storage_data or (
                item.tensor_data is not None and tuple(shape.size) != tuple(item.tensor_data.size)):
            raise RuntimeError(f"{folder}: {item.index} was not written as planned")


def write_scaled(out: Path, template: Path, iteration: str, shape: LucieShape, read: Read, states: dict[str, str],
                 journal: Path, progress: bool) -> list[WriteItem]:
    """Write template checkpoint ``template`` (Bridge's save folder, its ``iteration`` folder ``iter_NNNNNNN``) at
    ``shape``'s widths into ``out``: its files but the tensors copied, each checkpoint state ``s`` of a weight read
    as ``read(source, layer, states[s])``, the tensor files that ``journal`` records kept; the items written."""
    (out / iteration).mkdir(exist_ok=True)
    for file in [*template.glob("latest_*"), *(template / iteration).glob("*")]:  # all but the tensors
        if file.suffix != ".distcp" and file.name != ".metadata":
            shutil.copyfile(file, out / file.relative_to(template))
    template_metadata = FileSystemReader(str(template / iteration)).read_metadata()
    items = scaled_plan(template_metadata, shape, list(states))
    with tqdm(total=len(items), desc="tensors", unit="tensor", disable=not progress) as bar:
        write_streamed(out / iteration, items, _Producer(read, states, template / iteration, template_metadata, bar),
                       journal)
    _check_written(out / iteration, items)
    return items


def fresh_template(state: Path) -> Path:
    """An empty folder for the template in resume-state folder ``state`` (a killed run's template removed)."""
    template = state / "template"
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir()
    return template
