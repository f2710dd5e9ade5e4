"""`lucie verify`: Megatron model (local layers, CPU) vs transformers on multilingual prompts."""

from __future__ import annotations

import json
import shutil

import torch
import typer
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from converters_fixtures import converter_runs, exported  # noqa: F401



def run(*args: str):
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["verify", *map(str, args)])


def test_correct_export_matches(converter_runs, exported):
    result = run(converter_runs["trained"], exported, "--new-tokens", "2")
    assert result.exit_code == 0, result.output
    for language in ("fr", "en", "de", "es", "it", "code"):
        assert f"{language}" in result.output
    assert "match" in result.output and "DIFFERENT" not in result.output


def test_max_difference_is_tiny_and_continuations_equal(converter_runs, exported):
    from converters.verify import verify

    result = verify(converter_runs["trained"], exported)
    assert result.ok
    assert result.max_abs_diff < 1e-4
    assert all(len(p.hf_tokens) == 8 and p.same_continuation for p in result.prompts)


def test_corrupted_export_fails_with_exit_code_1(converter_runs, exported, tmp_path):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(exported, corrupted)
    index = json.loads((corrupted / "model.safetensors.index.json").read_text())
    name = "model.layers.0.self_attn.k_proj.weight"
    shard = corrupted / index["weight_map"][name]
    tensors = load_file(shard)
    tensors[name] = torch.flip(tensors[name], dims=[0]).contiguous()  # heads in the wrong order
    save_file(tensors, shard, metadata={"format": "pt"})
    result = run(converter_runs["trained"], corrupted, "--new-tokens", "2")
    assert result.exit_code == 1, result.output
    assert "MISMATCH" in result.output


def test_wrong_rope_theta_fails(converter_runs, exported, tmp_path):
    """An export labelled with the extension phase's RoPE theta no longer computes the checkpoint's function."""
    wrong = tmp_path / "wrong"
    shutil.copytree(exported, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "rope_theta": 20_000_000.0, "max_position_embeddings": 32_000}))
    result = run(converter_runs["trained"], wrong, "--new-tokens", "2")
    assert result.exit_code == 1, result.output
