"""`lucie import`: a Hugging Face folder to a torch_dist checkpoint that Megatron-Bridge starts training from."""

from __future__ import annotations

import json
import shutil

import torch
import torch.distributed.checkpoint as dcp
import typer
from typer.testing import CliRunner

from converters_fixtures import SHARED_TOKENIZER, converter_runs, hf_state  # noqa: F401
from test_export import MODEL_KEYS, read_global



def test_layout_is_a_bridge_checkpoint_with_te_names(converter_runs):
    imported = converter_runs["imported"]
    assert (imported / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (imported / "latest_train_state.pt").is_file()
    iteration = imported / "iter_0000000"
    assert json.loads((iteration / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert (iteration / "run_config.yaml").is_file()
    assert (iteration / "tokenizer" / "tokenizer.json").read_bytes() == (SHARED_TOKENIZER / "tokenizer.json").read_bytes()
    keys = set(dcp.FileSystemReader(str(iteration)).read_metadata().state_dict_metadata)
    assert set(MODEL_KEYS) <= keys  # stacked layers, norms under the Transformer Engine names
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in keys)


def test_bridge_pretrained_checkpoint_loads_it_unchanged(converter_runs):
    """The training run took the import as checkpoint.pretrained_checkpoint; with the LR warming up from 0,
    its iteration 1 holds exactly the imported weights, and those are the Hugging Face tensors."""
    imported = read_global(converter_runs["imported"] / "iter_0000000", MODEL_KEYS)
    trained = read_global(converter_runs["trained"] / "iter_0000001", MODEL_KEYS)
    for name in MODEL_KEYS:
        assert torch.equal(imported[name].float(), trained[name]), name
    hf = hf_state(converter_runs["hf"])
    assert torch.equal(imported["embedding.word_embeddings.weight"], hf["model.embed_tokens.weight"])
    assert torch.equal(imported["decoder.layers.mlp.linear_fc1.weight"][1][:384], hf["model.layers.1.mlp.gate_proj.weight"])


def test_round_trip_export_import_export_is_bit_identical(converter_runs, tmp_path):
    from converters.export import export_checkpoint
    from converters.import_hf import import_hf

    first = export_checkpoint(converter_runs["imported"], tmp_path / "first", shard_size="10MB", progress=False)
    assert (first.phase.name, first.step) == ("pretrain", 0)  # from run_config.yaml (4,096 / 500,000) and iter_0000000
    original = hf_state(converter_runs["hf"])
    exported = hf_state(tmp_path / "first")
    assert set(exported) == set(original)
    assert all(torch.equal(exported[name], original[name]) for name in original)
    import_hf(tmp_path / "first", tmp_path / "again")
    export_checkpoint(tmp_path / "again", tmp_path / "second", shard_size="10MB", progress=False)
    shards = sorted(p.name for p in (tmp_path / "first").glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "second").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_non_lucie_or_incomplete_folders_are_refused(converter_runs, tmp_path):
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    biased = tmp_path / "biased"
    shutil.copytree(converter_runs["hf"], biased)
    config = json.loads((biased / "config.json").read_text())
    (biased / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    result = CliRunner().invoke(app, ["import", str(biased), str(tmp_path / "out")])
    assert result.exit_code == 2 and "attention_bias" in result.output
    empty = tmp_path / "empty"
    shutil.copytree(converter_runs["hf"], empty)
    (empty / "model.safetensors").unlink()
    result = CliRunner().invoke(app, ["import", str(empty), str(tmp_path / "out")])
    assert result.exit_code == 2 and "missing" in result.output
    assert not (tmp_path / "out").exists()
