"""`lucie export` is layout-independent: checkpoints of the same weights saved under TP1PP1, TP2, PP2 and
DP2 with the distributed optimizer (Megatron-Bridge's pretrain on gloo CPU ranks) export identically."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata

from converters_fixtures import SHARED_TOKENIZER, Layout, converter_runs, hf_state, train  # noqa: F401

REFERENCE = "tp1pp1"
LAYOUTS = {
    REFERENCE: Layout(),
    "tp2": Layout(ranks=2, tensor_parallel=2),
    "pp2": Layout(ranks=2, pipeline_parallel=2),
    "dp2_distributed_optimizer": Layout(ranks=2, distributed_optimizer=True),
}
SAVED_ITERATION = "iter_0000001"  # its LR is 0 (warmup from 0): the pretrained weights, unchanged
QKV = "decoder.layers.self_attention.linear_qkv.weight"
RNG_GRID = re.compile(r"^rng_state/shard_\d+\.\d+_(\d+)\.(\d+)$")  # Bridge shards its RNG state over (PP, TP)


@pytest.fixture(scope="session")
def layout_checkpoints(converter_runs, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """Iteration 1 of a run per layout, all from the same imported weights (TP1PP1: converter_runs' own run)."""
    root = tmp_path_factory.mktemp("layouts")
    runs = {REFERENCE: converter_runs["trained"]}
    for name, layout in LAYOUTS.items():
        if name != REFERENCE:
            runs[name] = train(root / name, converter_runs["imported"], layout, train_iters=1)
    return {name: run / SAVED_ITERATION for name, run in runs.items()}


@pytest.fixture(scope="session")
def layout_exports(layout_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """`lucie export` of each layout's checkpoint (small shards, so the index is exercised too)."""
    from converters.export import export_checkpoint

    root = tmp_path_factory.mktemp("layout_exports")
    for name, checkpoint in layout_checkpoints.items():
        export_checkpoint(checkpoint, root / name, phase="pretrain", tokenizer=str(SHARED_TOKENIZER),
                          shard_size="10MB", progress=False)
    return {name: root / name for name in layout_checkpoints}


@dataclass(frozen=True)
class StoredLayout:
    """What a torch_dist checkpoint's index says about the ranks that wrote it."""

    writers: int  # .distcp files holding data
    rng_grid: tuple[int, int]  # (PP, TP)
    qkv_chunks_per_layer: int  # TP splits the QKV rows
    distributed_optimizer_writers: int  # files holding the distributed optimizer's sharded state (0: none)

    @classmethod
    def expected(cls, layout: Layout) -> StoredLayout:
        return cls(layout.ranks, (layout.pipeline_parallel, layout.tensor_parallel), layout.tensor_parallel,
                   layout.data_parallel if layout.distributed_optimizer else 0)

    @classmethod
    def read(cls, checkpoint: Path) -> StoredLayout:
        metadata = FileSystemReader(str(checkpoint)).read_metadata()
        grids = {tuple(map(int, m.groups())) for key in metadata.state_dict_metadata if (m := RNG_GRID.match(key))}
        assert len(grids) == 1, f"{checkpoint}: RNG state shards {grids}"
        layer_0_chunks = [c for c in metadata.state_dict_metadata[QKV].chunks if c.offsets[0] == 0]
        return cls(len(_files_holding(metadata, "")), grids.pop(), len(layer_0_chunks),
                   len(_files_holding(metadata, "optimizer.distributed.")))


def _files_holding(metadata: Metadata, prefix: str) -> set[str]:
    return {item.relative_path for index, item in metadata.storage_data.items() if index.fqn.startswith(prefix)}


def _other_files(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(folder.iterdir()) if file.suffix != ".safetensors"}


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert want and sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert (got[name].dtype, got[name].shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("name", LAYOUTS)
def test_checkpoint_is_stored_in_its_layout(layout_checkpoints, name):
    """Guards the comparison below: a layout that silently fell back to TP1PP1 would fail here."""
    assert StoredLayout.read(layout_checkpoints[name]) == StoredLayout.expected(LAYOUTS[name])


@pytest.mark.parametrize("name", [name for name in LAYOUTS if name != REFERENCE])
def test_export_is_identical_to_the_tp1pp1_export(layout_exports, name):
    got, want = layout_exports[name], layout_exports[REFERENCE]
    assert _other_files(got) == _other_files(want)  # config.json, index, tokenizer, model card
    _assert_same_tensors(hf_state(got), hf_state(want))


def test_export_round_trips_the_pretrained_hf_weights(converter_runs, layout_exports):  # noqa: F811
    """bf16 HF -> fp32 training weights (LR 0) -> bf16 export is exact."""
    _assert_same_tensors(hf_state(layout_exports[REFERENCE]), hf_state(converter_runs["hf"]))
