"""DeepSpeed universal checkpoints (Lucie's released optimizer states): read, exported, imported, refused."""

from __future__ import annotations

import json

import argparse
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from converters_fixtures import SHARED_TOKENIZER, hf_state, tiny_shape
from test_export import read_global
from universal_fixture import tiny_universal

ITERATION = 3


def original_hf_weights(folder: Path, state: str = "fp32", dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The tensors the fork's tools/convert_checkpoint/universal_to_hf_llama.py writes (its mapping, restated),
    of ``state`` (fp32, exp_avg or exp_avg_sq: the same re-packing) cast to ``dtype``."""
    states = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)
    args, version = states["args"], states["checkpoint_version"]
    assert version >= 2.0

    def load(name):
        return torch.load(folder / "zero" / name / f"{state}.pt", weights_only=True)["param"].to(dtype)

    def fix_ordering(param, num_splits, num_heads, head_dim):  # its fix_query_key_value_ordering, version >= 2.0
        shape = param.size()
        return param.view(num_heads, num_splits, head_dim, *shape[1:]).transpose(0, 1).contiguous().view(*shape)

    L, d = args.num_layers, args.hidden_size // args.num_attention_heads
    out = {"model.embed_tokens.weight": load("1.word_embeddings.weight")[:65024],
           "model.norm.weight": load(f"{L + 2}.weight"), "lm_head.weight": load(f"{L + 3}.lm_head.weight")}
    for l in range(L):
        p, m = f"{l + 2}.", f"model.layers.{l}."
        out[m + "input_layernorm.weight"] = load(p + "input_layernorm.weight")
        out[m + "post_attention_layernorm.weight"] = load(p + "post_attention_layernorm.weight")
        out[m + "mlp.down_proj.weight"] = load(p + "mlp.dense_4h_to_h.weight")
        out[m + "mlp.gate_proj.weight"], out[m + "mlp.up_proj.weight"] = load(p + "mlp.dense_h_to_4h.weight").chunk(2, dim=0)
        out[m + "self_attn.q_proj.weight"] = fix_ordering(load(p + "self_attention.query.weight"), 1, args.num_attention_heads, d)
        kv = fix_ordering(load(p + "self_attention.key_value.weight"), 2, args.num_key_value_heads, d)
        out[m + "self_attn.k_proj.weight"], out[m + "self_attn.v_proj.weight"] = kv.chunk(2, dim=0)
        out[m + "self_attn.o_proj.weight"] = load(p + "self_attention.dense.weight")
    return out


@pytest.fixture(scope="module")
def universal(tmp_path_factory) -> Path:
    return tiny_universal(tmp_path_factory.mktemp("universal") / "global_step3", ITERATION)


def _app() -> typer.Typer:
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return app


def _assert_same(hf: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert set(hf) == set(reference)
    for name, tensor in reference.items():
        assert hf[name].dtype == torch.bfloat16 and torch.equal(hf[name], tensor), name


def test_reader_recognises_the_format_and_its_facts(universal):
    from converters.universal.checkpoint import UniversalCheckpoint, is_universal
    from lucie_nemo.phases import PRETRAIN

    assert is_universal(universal) and not is_universal(universal / "zero")
    checkpoint = UniversalCheckpoint(universal)
    assert checkpoint.shape == tiny_shape()
    assert (checkpoint.info.iteration, checkpoint.info.tokens) == (ITERATION, 768 * 4096)  # 3 rampup batches of 256
    assert checkpoint.info.lr_scheduler["num_steps"] == 768
    assert checkpoint.phase() is PRETRAIN
    assert len(checkpoint.names) == 2 + 7 * 2 + 1
    # qkv: per query group (2 query heads, then that group's K, then its V), from query and key_value
    qkv = checkpoint.megatron("qkv", 1)
    query = checkpoint.read("3.self_attention.query.weight")
    key_value = checkpoint.read("3.self_attention.key_value.weight")
    assert torch.equal(qkv[:64], query[:64]) and torch.equal(qkv[64:96], key_value[:32])
    assert torch.equal(qkv[96:128], key_value[32:64]) and torch.equal(qkv[128:192], query[64:])
    assert torch.equal(checkpoint.megatron("qkv", 1, "exp_avg")[96:128],
                       checkpoint.read("3.self_attention.key_value.weight", "exp_avg")[32:64])


def test_export_of_a_universal_folder_is_the_original_converters_weights(universal, tmp_path):
    result = CliRunner().invoke(_app(), ["export", str(universal), str(tmp_path / "hf"), "--tokenizer", str(SHARED_TOKENIZER),
                                         "--shard-size", "10MB", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "revision step0000003" in result.output
    _assert_same(hf_state(tmp_path / "hf"), original_hf_weights(universal))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["training_steps"], config["training_tokens"]) == (3, 3 * 256 * 4096)  # 3 steps at the rampup's 256
    assert "Not Lucie-7B" in (tmp_path / "hf" / "README.md").read_text()  # a tiny Lucie-shaped model


def test_weights_only_import_then_export_gives_the_original_converters_weights(universal, tmp_path):
    from converters.export import export_checkpoint

    result = CliRunner().invoke(_app(), ["import", str(universal), str(tmp_path / "ckpt"), "--weights-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf", tokenizer=str(SHARED_TOKENIZER), shard_size="10MB", progress=False)
    _assert_same(hf_state(tmp_path / "hf"), original_hf_weights(universal))


def _edit_args(folder: Path, **changes) -> None:
    path = folder / "mp_rank_00_model_states.pt"
    states = torch.load(path, weights_only=False)
    if "checkpoint_version" in changes:
        states["checkpoint_version"] = changes.pop("checkpoint_version")
    states["args"] = argparse.Namespace(**{**vars(states["args"]), **changes})
    torch.save(states, path)


def _edit_states(folder: Path, **changes) -> None:
    path = folder / "mp_rank_00_model_states.pt"
    states = torch.load(path, weights_only=False)
    for key, value in changes.items():
        states[key] = {**states[key], **value} if isinstance(value, dict) else value
    torch.save(states, path)


def _truncate(folder: Path, name: str, state: str) -> None:
    path = folder / "zero" / name / f"{state}.pt"
    entry = torch.load(path, weights_only=True)
    torch.save({**entry, "param": entry["param"][:-1].clone()}, path)


BAD_INPUTS = {
    "missing parameter folder": (lambda f: shutil.rmtree(f / "zero" / "3.mlp.dense_4h_to_h.weight"), "3.mlp.dense_4h_to_h.weight/ is missing"),
    "missing state file": (lambda f: (f / "zero" / "2.input_layernorm.weight" / "exp_avg_sq.pt").unlink(), "exp_avg_sq.pt is missing"),
    "missing optimizer_state.pt": (lambda f: (f / "zero" / "optimizer_state.pt").unlink(), "optimizer_state.pt is missing"),
    "damaged state file": (lambda f: (f / "zero" / "4.weight" / "fp32.pt").write_bytes(b"PK\x03\x04garbage"), "not a readable torch file"),
    "shape against args": (lambda f: _truncate(f, "2.self_attention.key_value.weight", "fp32"), "has shape (127, 128), the checkpoint's args imply (128, 128)"),
    "more layers in args": (lambda f: _edit_args(f, num_layers=3), "4.input_layernorm.weight/ is missing"),
    "checkpoint_version 2.0": (lambda f: _edit_args(f, checkpoint_version=2.0), "checkpoint_version 2.0"),
    "biases": (lambda f: _edit_args(f, add_bias_linear=True), "args.add_bias_linear is True"),
    "tied embeddings": (lambda f: _edit_args(f, untie_embeddings_and_output_weights=False), "untie_embeddings_and_output_weights is False"),
    "another activation": (lambda f: _edit_args(f, swiglu=False), "args.swiglu is False"),
    "another vocabulary": (lambda f: _edit_args(f, padded_vocab_size=50_304), "args.padded_vocab_size is 50304"),
    "layernorm": (lambda f: _edit_args(f, normalization="layernorm"), "args.normalization is 'layernorm'"),
    "consumed samples": (lambda f: _edit_args(f, consumed_train_samples=1024), "args.consumed_train_samples is 1024, phase 'pretrain' has 768"),
    "another LR": (lambda f: _edit_args(f, lr=1e-4), "args.lr is 0.0001, phase 'pretrain' has 0.0003"),
    "another warmup": (lambda f: _edit_args(f, lr_warmup_samples=1_000), "args.lr_warmup_samples is 1000, phase 'pretrain' has 2000000"),
    "another rampup": (lambda f: _edit_args(f, rampup_batch_size=["128", "64", "10000000"]), "args.rampup_batch_size is ['128'"),
    "another context length": (lambda f: _edit_args(f, seq_length=2048), "(2048, 500000) is no Lucie phase"),
    "scheduler position": (lambda f: _edit_states(f, lr_scheduler={"num_steps": 1000}), "lr_scheduler num_steps is 1000, phase 'pretrain' has 768"),
    "iteration": (lambda f: _edit_states(f, iteration=4), "args.consumed_train_samples is 768, phase 'pretrain' has 1024 after iteration 4"),
    "another RoPE theta": (lambda f: _edit_args(f, rope_theta=10_000), "(4096, 10000) is no Lucie phase"),
    "scheduler warmup": (lambda f: _edit_states(f, lr_scheduler={"lr_warmup_steps": 1_000}), "lr_scheduler lr_warmup_steps is 1000, phase 'pretrain' has 2000000"),
    "scheduler max LR": (lambda f: _edit_states(f, lr_scheduler={"max_lr": 1e-3}), "lr_scheduler max_lr is 0.001, phase 'pretrain' has 0.0003"),
    "tokens": (lambda f: _edit_states(f, tokens=5), "tokens is 5, phase 'pretrain' has 3145728 after iteration 3"),
}


def _edit_adam_step(folder: Path, step: int) -> None:
    path = folder / "zero" / "optimizer_state.pt"
    state = torch.load(path, weights_only=False)
    for group in state["param_groups"]:
        group["step"] = step
    torch.save(state, path)


# Only the full import uses Adam's step count (the weights-only import and the export do not read it).
FULL_IMPORT_BAD_INPUTS = {
    "Adam step beyond the iteration": (lambda f: _edit_adam_step(f, 4), "Adam step [4] in its param groups, the checkpoint is iteration 3"),
    "Adam step 0": (lambda f: _edit_adam_step(f, 0), "Adam step [0] in its param groups"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, *FULL_IMPORT_BAD_INPUTS])
def test_bad_universal_checkpoints_are_one_error_line_and_nothing_written(universal, tmp_path, case):
    damage, message = {**BAD_INPUTS, **FULL_IMPORT_BAD_INPUTS}[case]
    folder = tmp_path / "global_step3"
    shutil.copytree(universal, folder)
    damage(folder)
    app = _app()
    commands = [["import", str(folder), str(tmp_path / "run"), "--no-progress"]]
    if case in BAD_INPUTS:
        commands += [["import", str(folder), str(tmp_path / "ckpt"), "--weights-only", "--no-progress"],
                     ["export", str(folder), str(tmp_path / "hf"), "--tokenizer", str(SHARED_TOKENIZER), "--no-progress"]]
    for command in commands:
        result = CliRunner().invoke(app, command)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (command[0], result.output)
        assert message in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step3"]  # no output, no staging folder left


def test_import_from_a_hub_revision_downloads_it_first(universal, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from fake_hub import FakeHub

    files = {str(path.relative_to(universal)): path.read_bytes() for path in universal.rglob("*") if path.is_file()}
    with FakeHub() as hub:
        hub.seed("OpenLLM-France/Lucie-tiny-optimizer-states", "step0000003", files)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        # a cache of its own (huggingface_hub reads HF_HOME once, when imported): the user's is left alone, and
        # a run of this test never finds an earlier run's snapshot there
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        app, repo = _app(), "OpenLLM-France/Lucie-tiny-optimizer-states"
        missing = CliRunner().invoke(app, ["import", repo, str(tmp_path / "ckpt"), "--weights-only", "--endpoint", hub.url,
                                           "--revision", "step0000004"])
        assert missing.exit_code == 2 and "has no revision 'step0000004'" in missing.output, missing.output
        result = CliRunner().invoke(app, ["import", repo, str(tmp_path / "ckpt"), "--weights-only", "--endpoint", hub.url,
                                          "--revision", "step0000003"])
    assert result.exit_code == 0, result.output
    assert "iteration 3's weights" in result.output
    fetched = {r.path.rsplit("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests if "/resolve/" in r.path}
    assert fetched == set(files)  # every file of the branch
    embedding = read_global(tmp_path / "ckpt" / "iter_0000000", ["embedding.word_embeddings.weight"])
    reference = torch.load(universal / "zero" / "1.word_embeddings.weight" / "fp32.pt", weights_only=True)["param"]
    assert torch.equal(embedding["embedding.word_embeddings.weight"], reference.bfloat16())


def test_full_import_writes_the_run_of_phase_1_at_its_iteration(universal, tmp_path):
    from megatron.core import dist_checkpointing

    result = CliRunner().invoke(_app(), ["import", str(universal), str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "phase pretrain iteration 3" in result.output and "resumes from it at step 4" in result.output
    assert (tmp_path / "run" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    folder = tmp_path / "run" / "iter_0000003"
    train_state = torch.load(folder / "train_state.pt", weights_only=False)
    assert (train_state["step"], train_state["consumed_train_samples"]) == (3, 768)  # 3 rampup batches of 256
    common = dist_checkpointing.load_common_state_dict(str(folder))
    scheduler = common["opt_param_scheduler"]
    assert (scheduler["num_steps"], scheduler["lr_warmup_steps"], scheduler["lr_decay_steps"]) == (768, 2_000_000, 762_144_586)
    groups = common["optimizer"]["optimizer"]["param_groups"]
    assert {group["step"] for group in groups} == {3}  # the Adam step count, in the param groups as on the GPUs
    name = "optimizer.state.exp_avg.embedding.word_embeddings.weight"
    saved = read_global(folder, [name, "embedding.word_embeddings.weight"])
    reference = torch.load(universal / "zero" / "1.word_embeddings.weight" / "exp_avg.pt", weights_only=True)["param"]
    assert torch.equal(saved[name], reference)


def test_a_lucie_7b_branch_holds_681_tensor_files_the_largest_1_07_gb():
    """What docs/converters.md says a kill can lose: a branch's files are fp32.pt, exp_avg.pt and exp_avg_sq.pt for
    each of Lucie-7B's universal parameters; the largest are the fp32 embedding and output layer."""
    import math

    from converters.universal.checkpoint import parameter_names
    from lucie_nemo.architecture import LUCIE_7B

    assert 3 * len(parameter_names(LUCIE_7B.num_layers)) == 681  # 227 parameters
    assert math.prod((LUCIE_7B.vocab_size, LUCIE_7B.hidden_size)) * 4 == 1_065_353_216
