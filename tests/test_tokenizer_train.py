"""`train_tokenizer`: Lucie's recipe and id layout on a few MB of real code and multilingual text."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import typer
from tokenizers import Tokenizer
from typer.testing import CliRunner

from lucie_nemo.errors import UserError
from lucie_nemo.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PROBE_TEXT,
    UNK_ID,
    lucie_pipeline,
    load_hf_tokenizer,
    load_tokenizer,
)
from lucie_nemo.tokenizer_train import train_tokenizer

STDLIB = sorted(Path(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}").glob("*.py"))
PROSE = [
    "Quelle est la capitale de la France ?\nParis. « C’est une belle ville », dit-elle (en 2024).",
    "The quick brown fox jumps over the lazy dog; \"quoted\" [text] and {braces}.\n\tIndented line.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein – „so“ heißt es.\u00a0Straße 12.",
    "¿Dónde está la biblioteca? ¡Está aquí! El niño comió 3 piñas. 😀",
    "L'Italia è una repubblica; però \"città\" e perché. Così è, se vi pare!",
]
VOCAB_SIZE = 8000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Python's standard library (about 4.7 MB of code) and a JSONL file of prose in Lucie's languages."""
    jsonl = tmp_path_factory.mktemp("corpus") / "prose.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(PROSE * 200)))
    return [*STDLIB, jsonl]


@pytest.fixture(scope="module")
def trained(corpus: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(corpus, VOCAB_SIZE, tmp_path_factory.mktemp("trained") / "tok")


def test_layout(trained: Path) -> None:
    tokenizer = load_tokenizer(trained)
    tokens = [tokenizer.id_to_token(index) for index in range(tokenizer.get_vocab_size())]
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokens[:4] == ["<s>", "</s>", "<unk>", "<pad>"]
    assert tokens[4:260] == [f"<0x{byte:02X}>" for byte in range(256)]
    assert tokens[260:300] == [f"<unused{index}>" for index in range(40)]
    assert {"▁", "\n", "\t", *"0123456789", *"()[]{}'\"<>/"} <= set(tokens[300:])


def test_learned_tokens_follow_lucie_recipe(trained: Path) -> None:
    tokens = load_tokenizer(trained).get_vocab()
    learned = [token for token, index in tokens.items() if index >= 300]
    assert [token for token in learned if re.search(r"\d", token) and len(token) > 1] == []
    assert [token for token in learned if re.search(r"[^▁]▁", token)] == []
    assert "▁▁▁▁" in tokens and "▁def" in tokens and "▁return" in tokens


def test_tokenizer_json_uses_lucie_pipeline(trained: Path) -> None:
    data = json.loads((trained / "tokenizer.json").read_text())
    pipeline = lucie_pipeline()
    for section in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert data[section] == pipeline[section]
    assert {key: data["model"][key] for key in pipeline["model"]} == pipeline["model"]


def test_written_configs_are_the_export_ones(trained: Path) -> None:
    assert sorted(path.name for path in trained.parent.iterdir()) == [trained.name]
    config = json.loads((trained / "tokenizer_config.json").read_text())
    assert (config["tokenizer_class"], config["add_bos_token"], config["add_eos_token"]) == ("PreTrainedTokenizerFast", True, False)
    assert [config[f"{name}_token"] for name in ("bos", "eos", "unk", "pad")] == ["<s>", "</s>", "<unk>", "<pad>"]
    assert config["clean_up_tokenization_spaces"] is False
    assert {key: value["content"] for key, value in config["added_tokens_decoder"].items()} == {
        "0": "<s>", "1": "</s>", "2": "<unk>", "3": "<pad>"}
    assert config["chat_template"].startswith("{{- bos_token }}") and "<|start_header_id|>" in config["chat_template"]
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    assert json.loads((trained / "special_tokens_map.json").read_text()) == {
        "bos_token": {"content": "<s>", **flags}, "eos_token": {"content": "</s>", **flags},
        "pad_token": {"content": "<pad>", **flags}, "unk_token": {"content": "<unk>", **flags}}


def test_loads_with_layout_checks_but_not_lucie_size(trained: Path) -> None:
    assert load_tokenizer(trained).get_vocab_size() == VOCAB_SIZE
    with pytest.raises(UserError, match=f"tokenizer has {VOCAB_SIZE} entries, Lucie's has 65024"):
        load_tokenizer(trained, expect_lucie_size=True)


def test_autotokenizer_is_faithful(trained: Path) -> None:
    reference = Tokenizer.from_file(str(trained / "tokenizer.json"))
    loaded = load_hf_tokenizer(trained)
    for text in [PROBE_TEXT, *PROSE]:
        assert loaded.encode(text) == reference.encode(text).ids
    assert loaded.encode("Bonjour")[0] == BOS_ID and loaded.encode("Bonjour")[-1] != EOS_ID
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id, loaded.pad_token_id) == (
        BOS_ID,
        EOS_ID,
        UNK_ID,
        PAD_ID,
    )


def test_decoding_round_trips_with_byte_fallback(trained: Path) -> None:
    tokenizer = load_tokenizer(trained)
    text = "def f(x):\n\treturn [x, 42]  # 日本語 🦉 « oui »"
    encoding = tokenizer.encode(text)
    assert encoding.tokens[-10:-6] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x89>"]
    assert tokenizer.decode(encoding.ids) == text


def test_text_field_and_jsonl_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"content": PROSE[0]}) + "\n\n" + json.dumps({"content": PROSE[1]}) + "\n")
    out = train_tokenizer([corpus], 1024, tmp_path / "tok", text_field="content")
    assert "▁capitale" in load_tokenizer(out).get_vocab()
    with pytest.raises(UserError, match=rf"{corpus}:1 has no string field 'text'"):
        train_tokenizer([corpus], 1024, tmp_path / "other")
    corpus.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=rf"{corpus}:2 is not valid JSON"):
        train_tokenizer([corpus], 1024, tmp_path / "other")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.jsonl", "tok"]


def test_input_errors(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text(PROSE[0])
    with pytest.raises(UserError, match="pass --vocab-size 1024 or more"):
        train_tokenizer([text], 300, tmp_path / "tok")
    with pytest.raises(UserError, match=f"corpus file {tmp_path / 'missing.txt'} does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], 1024, tmp_path / "tok")
    text.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match=f"{text} is not UTF-8 text"):
        train_tokenizer([text], 1024, tmp_path / "tok")


def test_cli_train(tmp_path: Path) -> None:
    from lucie_nemo.cli.tokenizer import register

    app = typer.Typer()
    register(app)
    text = tmp_path / "a.txt"
    text.write_text("\n".join(PROSE * 20))
    out = tmp_path / "tok"
    result = CliRunner().invoke(app, ["tokenizer", "train", str(text), "--vocab-size", "1024", "--output", str(out)])
    assert result.exit_code == 0, result.output
    size = load_tokenizer(out).get_vocab_size()
    assert f"wrote {out}: {size} tokens, verified with AutoTokenizer" in result.output
    result = CliRunner().invoke(app, ["tokenizer", "train", str(text), "--vocab-size", "10", "--output", str(out)])
    assert result.exit_code == 2
    assert "error: vocabulary size 10 is too small: pass --vocab-size 1024 or more" in result.output
