"""`lucie verify`: megatron-core vs transformers, layer by layer, on multilingual prompts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
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


def rewrite_shards(folder: Path, change) -> None:
    """Apply ``change`` (all tensors by name -> None, in place) and write every tensor back to its own shard."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(index.values()))
    tensors = {name: tensor for shard in shards for name, tensor in load_file(folder / shard).items()}
    change(tensors)
    for shard in shards:
        save_file({name: tensors[name].contiguous() for name in tensors if index[name] == shard}, folder / shard,
                  metadata={"format": "pt"})


@pytest.fixture(scope="module")
def prompts(exported) -> list[torch.Tensor]:
    from converters.verify import PROMPTS
    from lucie_nemo.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(exported)
    return [torch.tensor(tokenizer.encode(text).ids) for text in PROMPTS.values()]


def test_correct_export_matches(converter_runs, exported):
    result = run(converter_runs["trained"], exported, "--new-tokens", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress bars go to stderr
    for language in ("fr", "en", "de", "es", "it", "code"):
        line = re.compile(rf"{language:5s} max \|Δlogit\| (\d\.\d{{3}}e[-+]\d\d)  greedy 2 tokens: same")
        found = [match for match in map(line.fullmatch, lines) if match]
        assert len(found) == 1, f"one line for {language} expected in:\n{result.stdout}"
        assert float(found[0].group(1)) < 1e-4
    assert re.fullmatch(r"max abs difference \d\.\d{3}e[-+]\d\d \(tolerance 0.001\): match", lines[-1])


def test_max_difference_is_tiny_and_continuations_equal(converter_runs, exported):
    from converters.verify import verify

    result = verify(converter_runs["trained"], exported, progress=False)
    assert result.ok
    assert result.max_abs_diff < 1e-4
    assert all(len(p.hf_tokens) == 8 and p.same_continuation and p.first_difference is None for p in result.prompts)


def test_streamed_megatron_logits_equal_the_whole_model(converter_runs, exported, prompts, world):
    """The one-layer model loaded layer by layer computes what the whole GPTModel computes."""
    from megatron.core import dist_checkpointing

    from converters.hf_writer import read_json
    from converters.megatron_model import local_provider
    from converters.megatron_reader import locate
    from converters.verify import MegatronLayers, checkpoint_model, streamed_logits
    from lucie_nemo.phases import PRETRAIN

    checkpoint = checkpoint_model(locate(converter_runs["trained"]), read_json(exported / "config.json"))
    whole = local_provider(checkpoint.shape, PRETRAIN, torch.float32, rotary_base=checkpoint.rotary_base).provide()
    sharded = whole.sharded_state_dict()
    loaded = dist_checkpointing.load(sharded, str(checkpoint.weights_dir))
    result = whole.load_state_dict({key: loaded[key] for key in sharded}, strict=False)
    assert all(key.endswith("._extra_state") for key in result.missing_keys)
    assert result.unexpected_keys == []
    with torch.no_grad():
        for parameter in whole.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))
        expected = [whole.eval()(input_ids=ids[None], position_ids=torch.arange(len(ids))[None], attention_mask=None)[0]
                    for ids in prompts]
        streamed = streamed_logits(MegatronLayers(checkpoint), prompts)
    for want, got in zip(expected, streamed):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_streamed_transformers_logits_equal_the_whole_model(exported, prompts):
    from transformers import LlamaForCausalLM

    from converters.verify import HuggingFaceLayers, streamed_logits

    whole = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = [whole(input_ids=ids[None]).logits[0] for ids in prompts]
        streamed = streamed_logits(HuggingFaceLayers(exported), prompts)
    for want, got in zip(expected, streamed):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_teacher_forcing_gives_the_greedy_continuation_up_to_its_first_difference():
    from converters.verify import PromptResult, own_continuation

    logits = torch.zeros(5, 10)  # prompt of 2 tokens + 3 continuation tokens: positions 1..4 predict
    for position, token in ((1, 7), (2, 3), (3, 9), (4, 4)):
        logits[position, token] = 1.0
    assert own_continuation(logits, 2, [7, 3, 9]) == [7, 3, 9]
    assert own_continuation(logits, 2, [7, 5, 9]) == [7, 3]
    result = PromptResult("fr", 0.0, own_continuation(logits, 2, [7, 5, 9]), [7, 5, 9])
    assert not result.same_continuation and result.first_difference == 1


def test_corrupted_export_fails_with_exit_code_1(converter_runs, exported, tmp_path):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(exported, corrupted)
    name = "model.layers.0.self_attn.k_proj.weight"
    reverse_heads = lambda tensors: tensors.update({name: torch.flip(tensors[name], dims=[0])})  # noqa: E731
    rewrite_shards(corrupted, reverse_heads)
    result = run(converter_runs["trained"], corrupted, "--new-tokens", "2")
    assert result.exit_code == 1, result.output
    assert "MISMATCH" in result.output


def test_swapped_layers_fail(converter_runs, exported, tmp_path):
    """An export whose layers 0 and 1 are exchanged (same tensors, wrong places) is caught."""
    from converters.verify import verify

    swapped = tmp_path / "swapped"
    shutil.copytree(exported, swapped)

    def swap_layers(tensors: dict) -> None:
        for name in [n for n in tensors if n.startswith("model.layers.0.")]:
            other = name.replace("model.layers.0.", "model.layers.1.")
            tensors[name], tensors[other] = tensors[other], tensors[name]

    rewrite_shards(swapped, swap_layers)
    result = verify(converter_runs["trained"], swapped, new_tokens=2, progress=False)
    assert not result.ok and result.max_abs_diff > 1e-2


def test_wrong_rope_theta_fails(converter_runs, exported, tmp_path):
    """An export labelled with the extension phase's RoPE theta no longer computes the checkpoint's function."""
    wrong = tmp_path / "wrong"
    shutil.copytree(exported, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "rope_theta": 20_000_000.0, "max_position_embeddings": 32_000}))
    result = run(converter_runs["trained"], wrong, "--new-tokens", "2")
    assert result.exit_code == 1, result.output


def _fewer_layers_folder(converter_runs, exported, tmp_path) -> tuple[Path, Path]:
    """A consistent Hugging Face folder with only layer 0 of the export: another shape than the checkpoint."""
    folder = tmp_path / "one-layer"
    shutil.copytree(exported, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {name: tensor for shard in set(index.values()) for name, tensor in load_file(folder / shard).items()
               if not name.startswith("model.layers.1.")}
    for shard in set(index.values()):
        (folder / shard).unlink()
    (folder / "model.safetensors.index.json").unlink()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    return converter_runs["trained"], folder


def _no_rope_theta(converter_runs, exported, tmp_path) -> tuple[Path, Path]:
    ckpt = tmp_path / "iter_0000002"
    shutil.copytree(converter_runs["trained"] / "iter_0000002", ckpt)
    run_config = (ckpt / "run_config.yaml").read_text()
    assert "\n  rotary_base: 500000\n" in run_config
    (ckpt / "run_config.yaml").write_text(run_config.replace("\n  rotary_base: 500000\n", "\n"))
    return ckpt, exported


def _per_layer_tensors(converter_runs, exported, tmp_path) -> tuple[Path, Path]:
    from test_export import per_layer_checkpoint

    return per_layer_checkpoint(converter_runs["trained"] / "iter_0000002", tmp_path / "iter_0000002"), exported


@pytest.mark.parametrize(("inputs", "message"), [
    (_fewer_layers_folder, r"error: checkpoint \S+ is LucieShape\(num_layers=2, .*\), the Hugging Face folder is "
                           r"LucieShape\(num_layers=1, .*\): pass the folder that `lucie export` wrote from this checkpoint"),
    (_no_rope_theta, r"error: checkpoint \S+ does not say its RoPE theta \(rotary_base\): cannot rebuild its model"),
    (_per_layer_tensors, r"error: checkpoint \S+ stores one tensor per layer \(decoder.layers.N.X\): verify reads "
                         r"the stacked layers .*"),
])
def test_bad_input_exits_2_with_one_error_line(converter_runs, exported, tmp_path, inputs, message):
    ckpt, folder = inputs(converter_runs, exported, tmp_path)
    result = run(ckpt, folder, "--new-tokens", "2")
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and re.fullmatch(message, result.stderr.strip()), result.output
