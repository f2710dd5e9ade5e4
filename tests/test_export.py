"""`lucie export`: a real CPU training checkpoint (and synthetic NeMo 2 / per-layer layouts) to Hugging Face."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import typer
import yaml
from safetensors import safe_open
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from typer.testing import CliRunner

from converters_fixtures import SHARED_TOKENIZER, converter_runs, exported, hf_state, tiny_shape  # noqa: F401



def cli() -> typer.Typer:
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return app


def read_global(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Whole tensors with torch.distributed.checkpoint's own load (independent of the exporter's reader)."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    state = {name: torch.empty(tuple(metadata[name].size), dtype=metadata[name].properties.dtype) for name in names}
    dcp.load(state, checkpoint_id=str(folder))
    return state


def read_everything(folder: Path) -> tuple[dict[str, TensorStorageMetadata], dict]:
    """(tensor metadata, every tensor whole and every byte object) of a torch_dist checkpoint, read by torch's own load."""
    reader = dcp.FileSystemReader(str(folder))
    metadata = reader.read_metadata().state_dict_metadata
    state = {key: torch.empty(list(item.size), dtype=item.properties.dtype) if isinstance(item, TensorStorageMetadata)
             else None for key, item in metadata.items()}
    dcp.load(state, storage_reader=reader, no_dist=True)
    return {key: item for key, item in metadata.items() if isinstance(item, TensorStorageMetadata)}, state


def expected_hf(megatron: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The Hugging Face tensors, spelled out head by head from stacked TE-named Megatron tensors (bf16 cast)."""
    shape = tiny_shape()
    d, heads, groups = shape.head_dim, shape.num_attention_heads, shape.num_query_groups
    per_group = heads // groups
    get = lambda name: megatron[prefix + name].to(torch.bfloat16)  # noqa: E731
    out = {"model.embed_tokens.weight": get("embedding.word_embeddings.weight"),
           "model.norm.weight": get("decoder.final_layernorm.weight"), "lm_head.weight": get("output_layer.weight")}
    for i in range(shape.num_layers):
        qkv = get("decoder.layers.self_attention.linear_qkv.weight")[i]
        block = lambda g, j: qkv[(g * (per_group + 2) + j) * d:(g * (per_group + 2) + j + 1) * d]  # noqa: E731
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = torch.cat([block(g, j) for g in range(groups) for j in range(per_group)])
        out[p + "self_attn.k_proj.weight"] = torch.cat([block(g, per_group) for g in range(groups)])
        out[p + "self_attn.v_proj.weight"] = torch.cat([block(g, per_group + 1) for g in range(groups)])
        out[p + "self_attn.o_proj.weight"] = get("decoder.layers.self_attention.linear_proj.weight")[i]
        fc1 = get("decoder.layers.mlp.linear_fc1.weight")[i]
        out[p + "mlp.gate_proj.weight"] = fc1[: shape.ffn_hidden_size]
        out[p + "mlp.up_proj.weight"] = fc1[shape.ffn_hidden_size:]
        out[p + "mlp.down_proj.weight"] = get("decoder.layers.mlp.linear_fc2.weight")[i]
        out[p + "input_layernorm.weight"] = get("decoder.layers.self_attention.linear_qkv.layer_norm_weight")[i]
        out[p + "post_attention_layernorm.weight"] = get("decoder.layers.mlp.linear_fc1.layer_norm_weight")[i]
    return out


MODEL_KEYS = [
    "embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight",
    "decoder.layers.self_attention.linear_qkv.weight", "decoder.layers.self_attention.linear_proj.weight",
    "decoder.layers.mlp.linear_fc1.weight", "decoder.layers.mlp.linear_fc2.weight",
    "decoder.layers.self_attention.linear_qkv.layer_norm_weight", "decoder.layers.mlp.linear_fc1.layer_norm_weight",
]


def test_tensors_are_the_bf16_cast_of_the_fp32_training_weights(converter_runs, exported):
    megatron = read_global(converter_runs["trained"] / "iter_0000002", MODEL_KEYS)
    assert megatron["decoder.layers.mlp.linear_fc1.weight"].dtype == torch.float32
    expected, got = expected_hf(megatron), hf_state(exported)
    assert set(got) == set(expected) and len(got) == 3 + 9 * tiny_shape().num_layers
    for name, tensor in expected.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor), name


def test_config_generation_config_and_card(exported):
    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import PRETRAIN

    config = json.loads((exported / "config.json").read_text())
    # The run's own numbers: 2 steps of 2 samples of 64 tokens, after an import (no steps), not Lucie-7B's.
    assert config == {**hf_config(PRETRAIN, 2, shape=tiny_shape()), "training_steps": 2, "training_tokens": 256}
    assert (config["rope_theta"], config["max_position_embeddings"], config["rope_scaling"]) == (500_000.0, 4_096, None)
    generation = json.loads((exported / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (0, 1)
    card = (exported / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["training_progress"] == {"num_steps": 2, "num_tokens": 256, "context_length": 4_096}
    assert "step0000002" in card and "**Not Lucie-7B**" in card and "the checkpoint's train state" in card
    assert (exported / "tokenizer.json").read_bytes() == (SHARED_TOKENIZER / "tokenizer.json").read_bytes()


def test_index_is_consistent(exported):
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in exported.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]  # 10MB shards
    assert sorted(set(index["weight_map"].values())) == shards
    seen = []
    for shard in shards:
        with safe_open(exported / shard, framework="pt") as f:
            seen += [(name, shard) for name in f.keys()]
    assert sorted(seen) == sorted(index["weight_map"].items())  # every tensor in exactly one shard
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in hf_state(exported).values())
    assert not list(exported.parent.glob(".*tmp*"))  # the staging folder is gone


def test_transformers_loads_the_export(exported):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(exported)
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in hf_state(exported).values())


def test_revision_names():
    from lucie_nemo.phases import ANNEAL, EXTENSION, PRETRAIN

    assert PRETRAIN.revision(5_000) == "step0005000"
    assert PRETRAIN.revision(753_851) == "step0753851"
    assert EXTENSION.revision(250) == "extension_step0000250"
    assert ANNEAL.revision(1_220) == "annealing_step0001220"


def test_cli_reads_iteration_and_requires_phase_when_the_config_cannot_tell(converter_runs, tmp_path):
    runner = CliRunner()
    ckpt = converter_runs["trained"] / "iter_0000001"
    result = runner.invoke(cli(), ["export", str(ckpt), str(tmp_path / "a"), "--tokenizer", str(SHARED_TOKENIZER)])
    assert result.exit_code == 2 and "--phase" in result.output
    args = ["export", str(ckpt), str(tmp_path / "b"), "--phase", "pretrain", "--tokenizer", str(SHARED_TOKENIZER), "--no-progress"]
    result = runner.invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "revision step0000001" in result.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["training_steps"] == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "__0_0.distcp").unlink(), "missing"),
        (lambda d: (d / ".metadata").unlink(), "no .metadata"),
        (lambda d: (d / "__0_0.distcp").write_bytes((d / "__0_0.distcp").read_bytes()[:1000]), "truncated"),
    ],
)
def test_truncated_checkpoint_is_refused(converter_runs, tmp_path, damage, message):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    ckpt = tmp_path / "iter_0000002"
    shutil.copytree(converter_runs["trained"] / "iter_0000002", ckpt)
    damage(ckpt)
    with pytest.raises(UserError, match=message):
        export_checkpoint(ckpt, tmp_path / "out", phase="pretrain", tokenizer=str(SHARED_TOKENIZER))
    assert not (tmp_path / "out").exists()


def test_foreign_and_non_lucie_checkpoints_are_refused(converter_runs, tmp_path):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a Megatron-Bridge"):
        export_checkpoint(tmp_path / "foreign", tmp_path / "o1", phase="pretrain", tokenizer=str(SHARED_TOKENIZER))
    biased = tmp_path / "iter_0000002"
    shutil.copytree(converter_runs["trained"] / "iter_0000002", biased)
    config = (biased / "run_config.yaml").read_text().replace("add_bias_linear: false", "add_bias_linear: true")
    (biased / "run_config.yaml").write_text(config)
    with pytest.raises(UserError, match="add_bias_linear"):
        export_checkpoint(biased, tmp_path / "o2", phase="pretrain", tokenizer=str(SHARED_TOKENIZER))


def _edit_run_config(old: str, new: str):
    def damage(ckpt: Path) -> None:
        text = (ckpt / "run_config.yaml").read_text()
        assert text.count(old) == 1, old
        (ckpt / "run_config.yaml").write_text(text.replace(old, new))
    return damage


def _extra_tensor(ckpt: Path) -> None:
    tensors = read_global(ckpt, MODEL_KEYS)
    tensors["decoder.layers.self_attention.q_layernorm.weight"] = torch.ones(2, 32)
    for file in [*ckpt.glob("*.distcp"), ckpt / ".metadata"]:
        file.unlink()
    dcp.save(tensors, checkpoint_id=str(ckpt))


@pytest.mark.parametrize(("damage", "message"), [
    (_edit_run_config("\n  normalization: RMSNorm\n", "\n  normalization: LayerNorm\n"),
     "has normalization='LayerNorm', a Lucie model has 'RMSNorm'"),
    (_edit_run_config("_target_: torch.nn.functional.silu", "_target_: torch.nn.functional.gelu"),
     "uses activation 'torch.nn.functional.gelu', Lucie uses silu"),
    (_extra_tensor, r"holds tensors a Lucie model has not \(decoder.layers.self_attention.q_layernorm.weight\)"),
    (_edit_run_config("\n  num_moe_experts: null\n", "\n  num_moe_experts: 8\n"),
     "has num_moe_experts=8, a Lucie model has None"),
    (_edit_run_config("\n  qk_layernorm: false\n", "\n  qk_layernorm: true\n"),
     "has qk_layernorm=True, a Lucie model has False"),
])
def test_non_lucie_architectures_are_refused(converter_runs, tmp_path, damage, message):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    ckpt = tmp_path / "iter_0000002"
    shutil.copytree(converter_runs["trained"] / "iter_0000002", ckpt)
    damage(ckpt)
    with pytest.raises(UserError, match=message):
        export_checkpoint(ckpt, tmp_path / "out", phase="pretrain", tokenizer=str(SHARED_TOKENIZER))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["iter_0000002"]


def test_tokenizer_larger_than_the_vocabulary_is_refused(converter_runs, tmp_path):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    tokenizer = json.loads((SHARED_TOKENIZER / "tokenizer.json").read_text("utf-8"))
    tokenizer["added_tokens"].append({"id": 65_024, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (tmp_path / "larger").mkdir()
    (tmp_path / "larger" / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=r"tokenizer \S+ has 65025 entries, the model's vocabulary 65024: "
                                        "pass the tokenizer it was trained with"):
        export_checkpoint(converter_runs["trained"], tmp_path / "out", phase="pretrain", tokenizer=str(tmp_path / "larger"))
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_wrong_step_and_existing_output_are_refused(converter_runs, exported, tmp_path):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    ckpt = converter_runs["trained"]
    with pytest.raises(UserError, match="--tokenizer"):
        export_checkpoint(ckpt, tmp_path / "o", phase="pretrain")
    with pytest.raises(UserError, match="iteration 2, not step 5"):
        export_checkpoint(ckpt, tmp_path / "o", phase="pretrain", step=5, tokenizer=str(SHARED_TOKENIZER))
    with pytest.raises(UserError, match="rotary_base"):
        export_checkpoint(ckpt, tmp_path / "o", phase="extension", tokenizer=str(SHARED_TOKENIZER))
    with pytest.raises(UserError, match="already exists"):
        export_checkpoint(ckpt, exported, phase="pretrain", tokenizer=str(SHARED_TOKENIZER))


def synthetic_nemo2(converter_runs, root: Path) -> Path:
    """A NeMo 2 folder built here (context/ + weights/, 'module.' prefix, TE names, stacked layers) from the
    trained run's tensors. NeMo 2 itself is not installable with this stack: the layout follows its docs."""
    folder = root / "lucie--val_loss=11.2-step=2-consumed_samples=4.0-last"
    tensors = read_global(converter_runs["trained"] / "iter_0000002", MODEL_KEYS)
    dcp.save({f"module.{k}": v for k, v in tensors.items()}, checkpoint_id=str(folder / "weights"))
    (folder / "weights" / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    run_config = yaml.safe_load((converter_runs["trained"] / "iter_0000002" / "run_config.yaml").read_text())["model"]
    model = {"_target_": "nemo.collections.llm.gpt.model.llama.LlamaModel",
             "config": {"_target_": "nemo.collections.llm.gpt.model.llama.LlamaConfig",
                        **{k: run_config[k] for k in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                                                      "num_query_groups", "kv_channels", "seq_length", "rotary_base",
                                                      "normalization", "gated_linear_unit", "add_bias_linear",
                                                      "share_embeddings_and_output_weights", "position_embedding_type")}}}
    (folder / "context").mkdir()
    (folder / "context" / "model.yaml").write_text(yaml.safe_dump(model))
    shutil.copytree(SHARED_TOKENIZER, folder / "context" / "nemo_tokenizer")
    return folder


def test_nemo2_folder_exports_like_the_training_checkpoint(converter_runs, exported, tmp_path):
    from converters.export import export_checkpoint

    folder = synthetic_nemo2(converter_runs, tmp_path)
    result = export_checkpoint(folder, tmp_path / "out", phase="pretrain", shard_size="10MB", progress=False)
    assert result.step == 2
    assert (tmp_path / "out" / "tokenizer.json").is_file()  # from context/nemo_tokenizer
    for shard in sorted(exported.glob("*.safetensors")):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()


def test_nemo2_step_is_read_from_the_trainer_state_nemo_saves(converter_runs, tmp_path):
    """NeMo 2 saves Lightning's checkpoint entries (``global_step``, ...) as megatron-core's common state: in
    ``weights/common.pt`` (megatron-core up to 0.13), or as its ``common_state`` object in the .distcp files."""
    import io

    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    folder = synthetic_nemo2(converter_runs, tmp_path).rename(tmp_path / "lucie--val_loss=11.2-last")  # no step=N
    trainer_state = {"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.5.1", "loops": {}}
    torch.save(trainer_state, folder / "weights" / "common.pt")
    assert export_checkpoint(folder, tmp_path / "a", phase="pretrain", progress=False).step == 2
    (folder / "weights" / "common.pt").unlink()
    with pytest.raises(UserError, match=r"imported from Hugging Face and never trained is step 0, pass --step 0"):
        export_checkpoint(folder, tmp_path / "b", phase="pretrain")
    assert export_checkpoint(folder, tmp_path / "c", phase="pretrain", step=2, progress=False).step == 2
    shutil.rmtree(folder / "weights")
    tensors = read_global(converter_runs["trained"] / "iter_0000002", MODEL_KEYS)
    common = io.BytesIO()
    torch.save([{**trainer_state, "global_step": 0}], common)  # a ShardedObject as megatron-core stores one
    dcp.save({**{f"module.{k}": v for k, v in tensors.items()}, "common_state/shard_0_1": common},
             checkpoint_id=str(folder / "weights"))
    (folder / "weights" / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1}')
    assert export_checkpoint(folder, tmp_path / "d", phase="pretrain", progress=False).step == 0


def test_the_readers_lucie_rules_are_the_providers():
    from lucie_nemo.architecture import LUCIE_RULES
    from lucie_nemo.model import LucieModelProvider

    assert LUCIE_RULES == {name: LucieModelProvider.__dataclass_fields__[name].default for name in LUCIE_RULES}


def test_the_exporter_does_not_import_megatron():
    """The export reads torch_dist files with torch alone: Megatron-Bridge's import took a third of its time."""
    import subprocess
    import sys

    probe = "import sys, converters.export; print(sorted({m.split('.')[0] for m in sys.modules} & {'megatron', 'transformers'}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def per_layer_checkpoint(stacked_iteration: Path, ckpt: Path) -> Path:
    """``stacked_iteration``'s model tensors saved one tensor per layer under the local spec's norm names."""
    stacked = read_global(stacked_iteration, MODEL_KEYS)
    local = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
             "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
    per_layer = {}
    for key, tensor in stacked.items():
        if key.startswith("decoder.layers."):
            name = key.removeprefix("decoder.layers.")
            per_layer |= {f"decoder.layers.{i}.{local.get(name, name)}": tensor[i].clone() for i in range(tensor.shape[0])}
        else:
            per_layer[key] = tensor
    dcp.save(per_layer, checkpoint_id=str(ckpt))
    shutil.copy(stacked_iteration / "run_config.yaml", ckpt)
    return ckpt


def test_per_layer_local_names_export_like_stacked_te_names(converter_runs, exported, tmp_path):
    """Checkpoints with one tensor per layer and the local spec's norm names read the same."""
    from converters.export import export_checkpoint

    ckpt = per_layer_checkpoint(converter_runs["trained"] / "iter_0000002", tmp_path / "iter_0000002")
    export_checkpoint(ckpt, tmp_path / "out", phase="pretrain", tokenizer=str(SHARED_TOKENIZER), shard_size="10MB", progress=False)
    for shard in sorted(exported.glob("*.safetensors")):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()


def test_tied_embeddings_are_refused(converter_runs, tmp_path):
    from converters.export import export_checkpoint
    from lucie_nemo.errors import UserError

    tensors = read_global(converter_runs["trained"] / "iter_0000002", [k for k in MODEL_KEYS if k != "output_layer.weight"])
    ckpt = tmp_path / "iter_0000002"
    dcp.save(tensors, checkpoint_id=str(ckpt))
    shutil.copy(converter_runs["trained"] / "iter_0000002" / "run_config.yaml", ckpt)
    with pytest.raises(UserError, match="tied"):
        export_checkpoint(ckpt, tmp_path / "out", phase="pretrain", tokenizer=str(SHARED_TOKENIZER))
