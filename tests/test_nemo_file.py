"""`.nemo` files read in place: NeMo's own tarball (tests/fixtures/nemo1, written by NeMo 2.2.1's HF->NeMo Llama
converter from the tiny Hugging Face model beside it) exported, verified and published; its variants built here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import typer
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nemo1"
NEMO = FIXTURES / "tiny_llama_bf16.nemo"
HF = FIXTURES / "hf_tiny_llama"
CONFIG = "./model_config.yaml"


def run(*args: str | Path):
    """`lucie ARGS` in this process."""
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, list(map(str, args)))


def members(path: Path) -> dict[str, bytes]:
    """Every regular file of a tar, by its stored name."""
    with tarfile.open(path, "r:") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers() if info.isfile()}


def write_nemo(path: Path, files: dict[str, bytes]) -> Path:
    """An uncompressed tar of ``files``, as NeMo writes a .nemo."""
    with tarfile.open(path, "w:") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def with_config(files: dict[str, bytes], **changes) -> dict[str, bytes]:
    config = yaml.safe_load(files[CONFIG]) | changes
    return files | {CONFIG: yaml.safe_dump(config).encode()}


def variant(tmp_path: Path, name: str, **changes) -> Path:
    """The fixture with model_config.yaml fields changed."""
    return write_nemo(tmp_path / name, with_config(members(NEMO), **changes))


def export(nemo: Path, out: Path, **options):
    from converters.export import export_checkpoint

    return export_checkpoint(nemo, out, **({"step": 0, "tokenizer": str(HF), "progress": False} | options))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """`lucie export` of the fixture in a fresh process: (output, the run, its TMPDIR)."""
    root = tmp_path_factory.mktemp("nemo_export")
    (root / "tmp").mkdir()
    command = [sys.executable, "-m", "lucie_nemo.cli", "export", str(NEMO), str(root / "out"), "--step", "0",
               "--tokenizer", str(HF), "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(root / "tmp")},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "out", result, root / "tmp"


def test_export_equals_the_hugging_face_model_bit_for_bit(exported):
    out, _, _ = exported
    got, want = load_file(out / "model-00001-of-00001.safetensors"), load_file(HF / "model.safetensors")
    assert sorted(got) == sorted(want) and len(got) == 3 + 9 * 2
    for name, tensor in want.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor), name
    assert (out / "tokenizer.json").read_bytes() == (HF / "tokenizer.json").read_bytes()
    config, reference = json.loads((out / "config.json").read_text()), json.loads((HF / "config.json").read_text())
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                  "num_hidden_layers", "vocab_size", "rope_theta", "rope_scaling", "rms_norm_eps", "tie_word_embeddings"):
        assert config[field] == reference[field], field
    assert config["max_position_embeddings"] == 4_096 and config["initializer_range"] == 0.02


def test_export_prints_one_line_and_leaves_nothing_behind(exported):
    """No library chatter (Gemma2's INFO line, deprecations) on either stream; the in-place index is removed."""
    out, result, tmp = exported
    assert result.stdout == (f"wrote {out}: 21 tensors in 1 shards, phase pretrain step 0, revision step0000000\n")
    assert result.stderr == ""
    assert tmp.is_dir() and not list(tmp.glob("lucie-nemo-*"))  # torch's own caches may be there
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "tmp"]


def test_verify_matches_and_catches_a_wrong_folder(exported, tmp_path):
    out, _, _ = exported
    command = [sys.executable, "-m", "lucie_nemo.cli", "verify", str(NEMO), str(out), "--new-tokens", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()  # nothing but the results (no megatron-core notice about common.pt)
    assert len(lines) == 7 and lines[-1] == "max abs difference 0.000e+00 (tolerance 0.001): match", result.stdout
    assert "WARNING" not in result.stderr and "INFO" not in result.stderr  # progress bars only
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for file in out.iterdir():
        (swapped / file.name).write_bytes(file.read_bytes())
    tensors = load_file(swapped / "model-00001-of-00001.safetensors")
    from safetensors.torch import save_file

    renamed = {name.replace("layers.0.", "layers.X.").replace("layers.1.", "layers.0.").replace("layers.X.", "layers.1."):
               tensor for name, tensor in tensors.items()}
    save_file(renamed, swapped / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    assert run("verify", NEMO, swapped, "--new-tokens", "2").exit_code == 1


def test_publish_against_the_fake_hub(exported, tmp_path):
    out, _, _ = exported
    with FakeHub() as hub:
        env = {**os.environ, "HF_TOKEN": hub.token, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        command = [sys.executable, "-m", "lucie_nemo.cli", "publish", str(out), "--repo", "lucie-tests/nemo1",
                   "--endpoint", hub.url]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "branch step0000000" in result.stdout
        stored = {path: content for path, content in hub.files("lucie-tests/nemo1", "step0000000").items()
                  if path != ".gitattributes"}
    assert stored == {file.name: file.read_bytes() for file in out.iterdir()}


def fp32_twin(tmp_path: Path) -> Path:
    """The fixture with every tensor cast to fp32 and precision: 32. Derived here with torch.distributed.checkpoint
    (the model_weights/ re-saved, the tar re-written), not written by NeMo."""
    files = members(NEMO)
    bf16, fp32 = tmp_path / "bf16", tmp_path / "fp32"
    bf16.mkdir()
    for name, content in files.items():
        if name.startswith("./model_weights/"):
            (bf16 / name.removeprefix("./model_weights/")).write_bytes(content)
    metadata = dcp.FileSystemReader(str(bf16)).read_metadata().state_dict_metadata
    state = {key: torch.empty(list(item.size), dtype=item.properties.dtype) if hasattr(item, "size") else None
             for key, item in metadata.items()}
    dcp.load(state, checkpoint_id=str(bf16), no_dist=True)
    assert sum(isinstance(value, torch.Tensor) for value in state.values()) == 9
    dcp.save({key: value.float() if isinstance(value, torch.Tensor) else value for key, value in state.items()},
             checkpoint_id=str(fp32), no_dist=True)
    weights = {f"./model_weights/{file.name}": file.read_bytes() for file in fp32.iterdir()}
    kept = {name: files[name] for name in ("./model_weights/metadata.json", "./model_weights/common.pt")}
    rest = {name: content for name, content in files.items() if not name.startswith("./model_weights/")}
    return write_nemo(tmp_path / "tiny_llama_fp32.nemo", with_config(rest, precision=32) | weights | kept)


def test_an_fp32_nemo_exports_the_same_bf16_tensors(exported, tmp_path):
    twin = fp32_twin(tmp_path)
    with tarfile.open(twin) as tar:
        assert yaml.safe_load(tar.extractfile(CONFIG).read())["precision"] == 32
    export(twin, tmp_path / "out")
    out, _, _ = exported
    for file in ("model-00001-of-00001.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "out" / file).read_bytes() == (out / file).read_bytes(), file
    assert run("verify", twin, out, "--new-tokens", "1").exit_code == 0


def test_the_tokenizer_inside_the_file_is_used(exported, tmp_path):
    """A tokenizer folder registered as a NeMo artifact (``nemo:NAME``) is exported without --tokenizer."""
    files = with_config(members(NEMO), tokenizer={"library": "huggingface", "type": "nemo:0a1b2c_hf_tiny_llama"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        files[f"./0a1b2c_hf_tiny_llama/{name}"] = (HF / name).read_bytes()
    nemo = write_nemo(tmp_path / "with_tokenizer.nemo", files)
    export(nemo, tmp_path / "out", tokenizer=None)
    out, _, _ = exported
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_no_tokenizer_is_an_error_line(tmp_path):
    """NeMo's converter records the Hugging Face tokenizer by its path outside the file; a SentencePiece model inside
    it is no Hugging Face tokenizer: both need --tokenizer."""
    result = run("export", NEMO, tmp_path / "out", "--step", "0")
    assert result.exit_code == 2
    assert result.output == f"error: {NEMO} ships no tokenizer (no tokenizer.json in it): pass --tokenizer FOLDER_OR_HUB_ID\n"
    sentencepiece = variant(tmp_path, "spm.nemo", tokenizer={"library": "sentencepiece", "model": "nemo:ab_tokenizer.model"})
    result = run("export", sentencepiece, tmp_path / "out", "--step", "0")  # only tokenizer.json files are exported
    assert result.exit_code == 2
    assert result.output == f"error: {sentencepiece} ships no tokenizer (no tokenizer.json in it): pass --tokenizer FOLDER_OR_HUB_ID\n"
    assert not (tmp_path / "out").exists()
    assert export(sentencepiece, tmp_path / "out").num_tensors == 21  # with --tokenizer


def test_llama31_rope_scaling_goes_into_config_json(exported, tmp_path):
    """scale_positional_embedding (NeMo's Llama 3.1 RoPE scaling, megatron-core's constants) is kept, and means the
    same frequencies in transformers as in megatron-core."""
    from converters.verify import MegatronLayers  # noqa: F401  (Megatron prepared for this process)
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaled = variant(tmp_path, "scaled.nemo", scale_positional_embedding=True)
    export(scaled, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_scaling"] == {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    hf = LlamaRotaryEmbedding(LlamaConfig.from_pretrained(tmp_path / "out")).inv_freq
    megatron = RotaryEmbedding(16, 1.0, rotary_base=500_000, rope_scaling=True, use_cpu_initialization=True).inv_freq
    unscaled = RotaryEmbedding(16, 1.0, rotary_base=500_000, use_cpu_initialization=True).inv_freq
    assert torch.allclose(hf, megatron, rtol=1e-6, atol=0) and not torch.allclose(hf, unscaled)
    assert run("verify", scaled, tmp_path / "out", "--new-tokens", "1").exit_code == 0
    result = run("verify", scaled, exported[0], "--new-tokens", "1")
    assert result.exit_code == 2 and "has RoPE scaling {'factor': 8.0" in result.output and "folder None" in result.output


def _older(files: dict[str, bytes], *extra: str) -> dict[str, bytes]:
    """The fixture's config with NeMo 1's older weight files instead of model_weights/."""
    return {CONFIG: files[CONFIG], **{name: b"pickled weights" for name in extra}}


def _encoder_names(files: dict[str, bytes], tmp_path: Path) -> dict[str, bytes]:
    """A torch_dist model_weights/ with the pre-megatron-core names (language_model.encoder...)."""
    dcp.save({"model.language_model.encoder.layers.0.mlp.dense_4h_to_h.weight": torch.zeros(4, 4)},
             checkpoint_id=str(tmp_path / "encoder"), no_dist=True)
    weights = {f"./model_weights/{file.name}": file.read_bytes() for file in (tmp_path / "encoder").iterdir()}
    return {name: content for name, content in files.items() if not name.startswith("./model_weights/")} | weights


@pytest.mark.parametrize(("make", "message"), [
    (lambda files, tmp: _older(files, "./model_weights.ckpt"),
     "holds model_weights.ckpt (pickled weights), NeMo 1's format before megatron-core torch_dist checkpoints, "
     "which is not supported"),
    (lambda files, tmp: _older(files, "./mp_rank_00/model_weights.ckpt", "./mp_rank_01/model_weights.ckpt"),
     "holds per-rank mp_rank_00/ weights, NeMo 1's format"),
    (lambda files, tmp: with_config(files, mcore_gpt=False),
     "has mcore_gpt: false, a GPT model with language_model.encoder... weights"),
    (_encoder_names, "holds model.language_model.encoder.layers.0.mlp.dense_4h_to_h.weight, a GPT model before megatron-core"),
], ids=["model_weights.ckpt", "mp_rank_XX", "mcore_gpt_false", "encoder_names"])
def test_older_nemo_formats_are_refused(tmp_path, make, message):
    from lucie_nemo.errors import UserError

    nemo = write_nemo(tmp_path / "old.nemo", make(members(NEMO), tmp_path))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        export(nemo, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"activation": "gelu"}, "has activation: 'gelu', a Lucie model has SwiGLU"),
    ({"normalization": "layernorm"}, "has normalization: 'layernorm', a Lucie model has 'rmsnorm'"),
    ({"position_embedding_type": "learned_absolute"}, "has position_embedding_type: 'learned_absolute'"),
    ({"share_embeddings_and_output_weights": True}, "has share_embeddings_and_output_weights: True"),
    ({"bias": True}, "has bias: True, a Lucie model has False"),
    ({"num_query_groups": 4}, "config says num_query_groups=4, tensors say 2"),
    ({"num_attention_heads": 8}, "config says num_query_groups=2, tensors say 4"),  # 8 heads of 8: QKV rows fit 4 groups
])
def test_non_lucie_configs_are_refused_naming_the_field(tmp_path, changes, message):
    from lucie_nemo.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export(variant(tmp_path, "other.nemo", **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_damaged_file_is_an_error_line(tmp_path):
    truncated = tmp_path / "truncated.nemo"
    truncated.write_bytes(NEMO.read_bytes()[:300_000])
    result = run("export", truncated, tmp_path / "out", "--step", "0", "--tokenizer", HF)
    assert result.exit_code == 2
    assert result.output == f"error: {truncated} ends inside one of its members: the file is truncated (copy it again)\n"
    files = members(NEMO)
    del files["./model_weights/__0_1.distcp"]
    from lucie_nemo.errors import UserError

    with pytest.raises(UserError, match=r"model_weights/__0_1\.distcp is missing or shorter than its index says: "
                                        "the file is truncated"):
        export(write_nemo(tmp_path / "missing.nemo", files), tmp_path / "out")
    compressed = tmp_path / "compressed.nemo"
    with tarfile.open(compressed, "w:gz") as tar:
        tar.add(NEMO, arcname="x")
    result = run("export", compressed, tmp_path / "out", "--step", "0", "--tokenizer", HF)
    assert result.exit_code == 2 and "gzip-compressed .nemo" in result.output
    assert not (tmp_path / "out").exists()


# `lucie ARGS[1:]` with the export paused once its first tensor is written; touches ARGS[0] then.
PAUSED_EXPORT = """
import sys, time
from pathlib import Path
import converters.hf_writer as hf_writer
write = hf_writer.write_safetensors
def paused(path, shard, produce, bar):
    written = []
    def produce_then_pause(item):
        if written:
            Path(marker).touch()
            time.sleep(600)
        written.append(item)
        return produce(item)
    write(path, shard, produce_then_pause, bar)
hf_writer.write_safetensors = paused
marker, sys.argv = sys.argv[1], ["lucie", *sys.argv[2:]]
from lucie_nemo.cli import main
main()
"""


def test_a_kill_during_the_export_leaves_no_half_folder(exported, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "paused"
    command = [sys.executable, "-c", PAUSED_EXPORT, str(marker), "export", str(NEMO), str(out), "--step", "0",
               "--tokenizer", str(HF), "--no-progress"]
    log = tmp_path / "log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        (staging,) = tmp_path.glob(".out.tmp-*")
        assert [file.name for file in staging.iterdir()] == ["model-00001-of-00001.safetensors"]
    finally:
        process.kill()  # SIGKILL: no clean-up of any kind runs
        process.wait(timeout=60)
    assert not out.exists()
    export(NEMO, out)  # a second run writes the whole folder beside the dead one's staging
    assert {file.name: file.read_bytes() for file in out.iterdir()} == {file.name: file.read_bytes()
                                                                        for file in exported[0].iterdir()}
