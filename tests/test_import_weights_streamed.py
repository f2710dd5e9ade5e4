"""`lucie import` of a Hugging Face folder and `lucie import --weights-only` of a universal checkpoint write, one
tensor at a time, exactly the checkpoint Megatron-Bridge writes when it holds the whole model (the in-memory
import they replaced, tests/in_memory_import.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from converters_fixtures import write_random_hf
from in_memory_import import import_in_memory
from test_export import read_everything
from universal_fixture import tiny_universal, watched_universal_reads

ITERATION = "iter_0000000"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights-only")
    return {"hf": write_random_hf(root / "hf"), "universal": tiny_universal(root / "universal" / "global_step3", 3)}


def _import(source: Path, out: Path, *options: str) -> None:
    from typer.testing import CliRunner

    from test_import_universal import _app

    result = CliRunner().invoke(_app(), ["import", str(source), str(out), "--no-progress", *options])
    assert result.exit_code == 0, result.output


def _run_config(folder: Path) -> str:
    """run_config.yaml with its save folder (the staging folder each was written in) named SAVE."""
    text = (folder / ITERATION / "run_config.yaml").read_text()
    return text.replace(yaml.safe_load(text)["checkpoint"]["save"], "SAVE")


@pytest.mark.parametrize("kind", ["hf", "universal"])
def test_the_streamed_import_is_bridges_checkpoint_bit_for_bit(kind, sources, tmp_path):
    _import(sources[kind], tmp_path / "streamed", *(["--weights-only"] if kind == "universal" else []))
    import_in_memory(kind, sources[kind], tmp_path / "reference")
    streamed, reference = tmp_path / "streamed", tmp_path / "reference"
    written, tensors = read_everything(streamed / ITERATION)
    expected, reference_tensors = read_everything(reference / ITERATION)
    assert sorted(tensors) == sorted(reference_tensors) and len(expected) == 3 + 6  # 6 stacked layer tensors
    for key, value in reference_tensors.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == tensors[key].dtype and torch.equal(value, tensors[key]), key
            chunks = lambda item: sorted((tuple(c.offsets), tuple(c.sizes)) for c in item.chunks)  # noqa: E731
            assert chunks(written[key]) == chunks(expected[key]), key
        else:  # the common state, the layers' extra state
            assert tensors[key] == value, key
    for name in (f"{ITERATION}/train_state.pt", f"{ITERATION}/metadata.json", "latest_train_state.pt",
                 "latest_checkpointed_iteration.txt"):
        assert (streamed / name).read_bytes() == (reference / name).read_bytes(), name
    assert _run_config(streamed) == _run_config(reference)
    assert yaml.safe_load(_run_config(streamed))["model"]["hidden_size"] == 128  # the real width, not the template's
    others = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*")  # noqa: E731
                                   if p.suffix != ".distcp" and p.name != ".metadata")
    tokenizer = [f"{ITERATION}/tokenizer/{name}" for name in ("special_tokens_map.json", "tokenizer.json",
                                                               "tokenizer_config.json")]
    assert others(streamed) == sorted([*others(reference), *(tokenizer + [f"{ITERATION}/tokenizer"] if kind == "hf" else [])])


def test_each_universal_weight_is_read_once_and_held_alone(sources, tmp_path):
    from converters.universal.checkpoint import UniversalCheckpoint

    with watched_universal_reads() as watched:
        _import(sources["universal"], tmp_path / "streamed", "--weights-only")
    assert sorted(watched.reads) == sorted((name, "fp32") for name in UniversalCheckpoint(sources["universal"]).names)
    assert watched.most_alive <= 2  # a layer's query and key_value, re-packed into its QKV
