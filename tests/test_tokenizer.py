"""The Lucie tokenizer: faithful ids through transformers, export, layout checks, CLI (real tokenizer files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import needs_shared
import typer
from tokenizers import Tokenizer, models
from typer.testing import CliRunner

from lucie_nemo.errors import UserError
from lucie_nemo.tokenizer import (
    BOS_ID,
    EOS_ID,
    LUCIE_VOCAB_SIZE,
    PAD_ID,
    PROBE_TEXT,
    UNK_ID,
    lucie_pipeline,
    export_tokenizer,
    load_hf_tokenizer,
    load_tokenizer,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
pytestmark = needs_shared

SAMPLES = {
    "fr": "Quelle est la capitale de la France ?\nParis. « L’hiver 1954 », l'abbé Pierre (1912-2007) a dit : "
    "« Mes amis, au secours ! »\n\tUne femme vient de mourir gelée à 3\u00a0h du matin. 🙏",
    "en": "The committee's report [2023] said: \"Revenue rose 12.5% to $4,200,000\" — a record.\r\n"
    "Next steps:\n  1) hire (3 people);\n  2) ship v2.0 by 31/12. 🚀",
    "de": "Größenwahn ist „keine Lösung“, sagte Frau Müller um 10:45 Uhr.\n\nStraße, Fußgänger und Übermaß "
    "(ca.\u00a0300\u00a0m) – alles in Ordnung? 👍",
    "es": "¿Cuántos años tiene Ñandú? ¡Tiene 7 años! «Él dijo: ‘sí’» —respondió María—.\n"
    "\tEl niño comió 2 piñas y 1 melón (¡qué rico!). 😀",
    "it": "Perché l'università è chiusa? «Lo sciopero» dura 48 ore; però c'è la mensa [aperta].\n"
    "Città: Roma, Milano, Napoli… Così è, se vi pare! 🍕",
    "code": "import json\n\n\ndef load(path: str) -> dict[str, list[int]]:\n"
    '    """Read {path} and return it."""\n\twith open(path) as f:  # 😀 UTF-8\n'
    "\t\treturn {'ids': [0x1F, 42, 3.14], \"key\": json.load(f)}\n\nif __name__ == \"__main__\":\n"
    "    print(load('/tmp/x.json')['ids'][0] <= 100 and (1 + 2) * 3 != 9, '<b>done</b>')\n",
}


def expected_decoding(text: str) -> str:
    """What Lucie's tokenizer gives back: NFC text without CR, NBSP as a plain space."""
    return unicodedata.normalize("NFC", text).replace("\r", "").replace("\u00a0", " ")


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    return Tokenizer.from_file(str(SHARED / "tokenizer.json"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tokenizer(SHARED, tmp_path_factory.mktemp("export") / "lucie-tokenizer")


@pytest.fixture(scope="module")
def hf_exported(exported: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(exported))


@pytest.mark.parametrize("language", SAMPLES)
def test_autotokenizer_on_export_gives_tokenizer_json_ids(language: str, reference: Tokenizer, hf_exported) -> None:
    text = SAMPLES[language]
    assert hf_exported.encode(text) == reference.encode(text).ids
    without_bos = reference.encode(text, add_special_tokens=False).ids
    assert hf_exported.encode(text, add_special_tokens=False) == without_bos
    assert hf_exported.encode(text)[0] == BOS_ID and hf_exported.encode(text)[-1] != EOS_ID


def test_batch_encoding_matches(reference: Tokenizer, hf_exported) -> None:
    texts = list(SAMPLES.values())
    assert hf_exported(texts)["input_ids"] == [encoding.ids for encoding in reference.encode_batch(texts)]


@pytest.mark.parametrize("language", SAMPLES)
def test_decoding_round_trips(language: str, reference: Tokenizer, hf_exported) -> None:
    text = SAMPLES[language]
    ids = reference.encode(text).ids
    assert hf_exported.decode(ids, skip_special_tokens=True) == expected_decoding(text)
    assert reference.decode(ids) == expected_decoding(text)
    with_bos = reference.decode(ids, skip_special_tokens=False)
    assert hf_exported.decode(ids) == with_bos == "<s> " + expected_decoding(text)


def test_samples_exercise_the_normalizer(reference: Tokenizer) -> None:
    normalized = reference.normalizer.normalize_str("".join(SAMPLES.values()))
    for rewritten in ("\n▁", "\t▁", "(▁", "[▁", "{▁", "/▁", "<▁", "'▁", "’▁", '"▁', "«▁", "‘▁", "—▁"):
        assert rewritten in normalized
    assert "\r" not in normalized and "\u00a0" not in normalized


def test_bonjour_gets_bos_and_no_eos(hf_exported) -> None:
    assert hf_exported.encode("Bonjour") == [BOS_ID, 46276]


def test_exported_special_ids_and_size(hf_exported) -> None:
    assert (hf_exported.bos_token_id, hf_exported.eos_token_id) == (BOS_ID, EOS_ID)
    assert (hf_exported.unk_token_id, hf_exported.pad_token_id) == (UNK_ID, PAD_ID)
    assert len(hf_exported) == LUCIE_VOCAB_SIZE


def test_export_files(exported: Path) -> None:
    assert sorted(path.name for path in exported.iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (exported / "tokenizer.json").read_bytes() == (SHARED / "tokenizer.json").read_bytes()
    config = json.loads((exported / "tokenizer_config.json").read_text())
    source_config = json.loads((SHARED / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == source_config["chat_template"]
    assert config["added_tokens_decoder"] == source_config["added_tokens_decoder"]
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)
    assert json.loads((exported / "special_tokens_map.json").read_text()) == json.loads(
        (SHARED / "special_tokens_map.json").read_text()
    )
    assert [path.name for path in exported.parent.iterdir()] == [exported.name]


def test_chat_template_kept(hf_exported) -> None:
    text = hf_exported.apply_chat_template([{"role": "user", "content": "Bonjour"}], tokenize=False)
    assert text == "<s><|start_header_id|>user<|end_header_id|>\n\nBonjour<|eot_id|>"


def test_load_hf_tokenizer_accepts_export(exported: Path, reference: Tokenizer) -> None:
    loaded = load_hf_tokenizer(exported, expect_lucie_size=True)
    assert loaded.encode(PROBE_TEXT) == reference.encode(PROBE_TEXT).ids


def test_export_into_model_folder_replaces_tokenizer_files(tmp_path: Path, reference: Tokenizer) -> None:
    model = tmp_path / "model"
    model.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": LUCIE_VOCAB_SIZE}
    (model / "config.json").write_text(json.dumps(config))
    (model / "tokenizer_config.json").write_text((SHARED / "tokenizer_config.json").read_text())
    assert export_tokenizer(SHARED, model) == model
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert json.loads((model / "config.json").read_text()) == config
    loaded = load_hf_tokenizer(model)
    assert loaded.encode(SAMPLES["fr"]) == reference.encode(SAMPLES["fr"]).ids


def test_plain_autotokenizer_on_published_folder_is_unfaithful(reference: Tokenizer) -> None:
    """Regression test of the upstream problem: transformers 5 rebuilds the declared LlamaTokenizer."""
    from transformers import AutoTokenizer

    naive = AutoTokenizer.from_pretrained(str(SHARED))
    text = "Quelle est la capitale de la France ?\nParis."
    assert reference.encode(text).ids == [0, 25698, 1453, 1381, 9049, 1344, 1381, 2081, 2668, 312, 2400, 338]
    assert naive.encode(text) == [0, 25698, 1453, 1381, 9049, 1344, 1381, 2081, 2668, 312, 30169, 338]
    assert (reference.id_to_token(2400), naive.convert_ids_to_tokens(30169)) == ("▁Paris", "Paris")
    assert naive.backend_tokenizer.normalizer is None


def test_load_hf_tokenizer_refuses_published_folder() -> None:
    with pytest.raises(UserError, match=r"tokenizer_class 'LlamaTokenizer'.*run `lucie tokenizer export"):
        load_hf_tokenizer(SHARED)


def test_load_tokenizer_is_faithful_and_checks_lucie_size(reference: Tokenizer) -> None:
    loaded = load_tokenizer(SHARED, expect_lucie_size=True)
    assert loaded.encode(PROBE_TEXT).ids == reference.encode(PROBE_TEXT).ids
    assert [loaded.token_to_id(token) for token in ("<s>", "</s>", "<unk>", "<pad>")] == [0, 1, 2, 3]
    assert loaded.get_vocab_size() == LUCIE_VOCAB_SIZE


def test_load_tokenizer_refuses_other_layout(tmp_path: Path) -> None:
    Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError, match="maps <s> to id 1, Lucie needs 0"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_source_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match="neither a folder nor a Hub id"):
        load_tokenizer(tmp_path / "missing" / "folder")


def test_hub_id_offline_gives_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "from lucie_nemo.tokenizer import load_tokenizer\nload_tokenizer()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "UserError: could not download the tokenizer of Hub repository OpenLLM-France/Lucie-7B" in result.stderr


def test_pipeline_data_is_lucie_tokenizer_json() -> None:
    pipeline = lucie_pipeline()
    source = json.loads((SHARED / "tokenizer.json").read_text())
    for section in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert pipeline[section] == source[section]
    assert pipeline["model"] == {key: value for key, value in source["model"].items() if key not in ("vocab", "merges")}
    assert pipeline["chat_template"] == json.loads((SHARED / "tokenizer_config.json").read_text())["chat_template"]


def cli() -> typer.Typer:
    """A local app with only the tokenizer group (imported here: the `lucie` app imports every group)."""
    from lucie_nemo.cli.tokenizer import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_export(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["tokenizer", "export", str(SHARED), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out'}" in result.output
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (SHARED / "tokenizer.json").read_bytes()


def test_cli_export_bad_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["tokenizer", "export", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"error: {tmp_path} has no tokenizer.json" in result.output
    assert not (tmp_path / "out").exists()


def _post_processor_adds_eos(tokenizer: dict) -> str:
    processor = tokenizer["post_processor"]
    processor["single"].append({"SpecialToken": {"id": "</s>", "type_id": 0}})
    processor["special_tokens"]["</s>"] = {"id": "</s>", "ids": [EOS_ID], "tokens": ["</s>"]}
    return r"encodes 'Bonjour' as \[0, 46276, 1\], Lucie adds <s> and not </s>"


def _no_byte_fallback(tokenizer: dict) -> str:
    tokenizer["model"]["byte_fallback"] = False
    return "tokenizer model is not a byte-fallback BPE"


def _byte_token_moved(tokenizer: dict) -> str:
    vocab = tokenizer["model"]["vocab"]
    assert (vocab["<0x41>"], vocab["▁▁"]) == (69, 301)
    vocab["<0x41>"], vocab["▁▁"] = 301, 69
    return "tokenizer maps <0x41> to id 301, Lucie needs 69"


@pytest.mark.parametrize("edit", [_post_processor_adds_eos, _no_byte_fallback, _byte_token_moved])
def test_load_tokenizer_refuses_edited_lucie_layout(tmp_path: Path, edit) -> None:
    """The real tokenizer.json with one layout rule broken is refused, naming the rule."""
    tokenizer = json.loads((SHARED / "tokenizer.json").read_text("utf-8"))
    message = edit(tokenizer)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_tokenizer(tmp_path)
