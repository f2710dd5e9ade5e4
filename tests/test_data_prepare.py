"""`lucie prepare-data`: exact token ids, split at N tokens, stats, resume, errors (real Lucie tokenizer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import needs_shared
import typer
from tokenizers import Tokenizer
from typer.testing import CliRunner

from lucie_nemo.data import prepare
from lucie_nemo.data.prepare import PrepareConfig, output_prefixes, prepare_data, stats_path
from lucie_nemo.errors import UserError
from original_rules import original_ids

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
pytestmark = needs_shared

DOCUMENTS = [
    "Quelle est la capitale de la France ?\nParis. « L’été — c’est “chaud” », dit-elle (à 14 h 30).",
    "The quick brown fox (aged 7) jumps over 1,234 lazy dogs; 'quoted' [sic] {braces} <tags>.\r\n",
    "",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein – „so“ heißt es 2024.\n\n" * 40,
    "   \n\t ",
    "¿Dónde está la biblioteca? ¡Está aquí! ‹ángulo› ‚bajo‘ ―raya <s> not a special token?",
    "def f(x: int) -> dict[str, list[int]]:\n\treturn {'a': [x, 0x1F]}  # 😀 /tmp/x.py\n" * 12,
    "L'Italia è una repubblica; però \"città\" e perché.\u00a0Fine\u00a0!",
]
PARQUET_DOCUMENTS = ["Une ligne Parquet (première).", "", "Zweite Zeile:\n\tEingerückt."]
TEXT_DOCUMENT = "Un fichier texte entier.\nAvec deux lignes (et des parenthèses).\n"


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))


def expected_ids(reference: Tokenizer, texts: list[str]) -> list[list[int]]:
    """The original run's ids of each document (empty ones included, as <s></s>)."""
    return [original_ids(reference, text) for text in texts]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: text, "id": i}) + "\n" for i, text in enumerate(texts)))
    return path


def read_dataset(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    assert dataset.index.dtype == np.uint16  # 65,024 entries fit in uint16, as megatron chooses
    assert list(dataset.document_indices) == list(range(len(dataset) + 1))  # one sequence per document
    return [dataset[i].tolist() for i in range(len(dataset))]


def config(inputs: list[Path], prefix: Path, **changes) -> PrepareConfig:
    options = {"workers": 2, "chunk_bytes": 256, "progress": False, **changes}
    return PrepareConfig(inputs=tuple(inputs), tokenizer=str(TOKENIZER), output_prefix=prefix, **options)


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    jsonl = write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": PARQUET_DOCUMENTS}), parquet, row_group_size=2)
    text = tmp_path / "whole.txt"
    text.write_text(TEXT_DOCUMENT)
    return [jsonl, parquet, text]


def test_token_ids_and_stats_are_exact(tmp_path: Path, inputs: list[Path], reference: Tokenizer) -> None:
    prefix = tmp_path / "out" / "corpus_text_document"
    results = prepare_data(config(inputs, prefix))

    expected = expected_ids(reference, DOCUMENTS + PARQUET_DOCUMENTS + [TEXT_DOCUMENT])
    assert read_dataset(prefix) == expected
    lengths = [len(ids) for ids in expected]
    stats = {
        "documents": len(expected),
        "tokens": sum(lengths),
        "min_document_tokens": min(lengths),
        "max_document_tokens": max(lengths),
        "empty_documents": 3,
        "document_tokens": "all",
        "inputs": [str(path) for path in inputs],
        "tokenizer": str(TOKENIZER),
        "text_field": "text",
    }
    assert json.loads(stats_path(prefix).read_text()) == stats
    assert results == {prefix: stats}
    assert sorted(path.name for path in prefix.parent.iterdir()) == [
        "corpus_text_document.bin",
        "corpus_text_document.idx",
        "corpus_text_document.stats.json",
    ]  # no work folder, no temporary file left


def test_split_at_puts_documents_of_at_most_n_tokens_in_the_short_output(
    tmp_path: Path, inputs: list[Path], reference: Tokenizer
) -> None:
    expected = expected_ids(reference, DOCUMENTS + PARQUET_DOCUMENTS + [TEXT_DOCUMENT])
    split_at = len(expected[0])  # a document of exactly N tokens (BOS and EOS included) is short
    prefix = tmp_path / "splitted" / "corpus_text_document"
    prepare_data(config(inputs, prefix, split_at=split_at))

    outputs = output_prefixes(prefix, split_at)
    assert outputs == {
        "short": tmp_path / "splitted" / f"length-0-{split_at}" / "corpus_text_document",
        "long": tmp_path / "splitted" / f"length-{split_at}-inf" / "corpus_text_document",
    }
    short = [ids for ids in expected if len(ids) <= split_at]
    long = [ids for ids in expected if len(ids) > split_at]
    assert short and long and expected[0] in short
    assert read_dataset(outputs["short"]) == short
    assert read_dataset(outputs["long"]) == long
    for key, documents, selection in (("short", short, f"<= {split_at}"), ("long", long, f"> {split_at}")):
        stats = json.loads(stats_path(outputs[key]).read_text())
        assert stats["documents"] == len(documents)
        assert stats["tokens"] == sum(map(len, documents))
        assert stats["min_document_tokens"] == min(map(len, documents))
        assert stats["max_document_tokens"] == max(map(len, documents))
        assert stats["document_tokens"] == selection
        assert stats["empty_documents"] == 3
    assert not prefix.with_name(prefix.name + ".parts").exists()


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_without_redoing_finished_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Tokenizer
) -> None:
    batches = [DOCUMENTS[:3], DOCUMENTS[3:6], DOCUMENTS[6:]]
    inputs = [write_jsonl(tmp_path / f"part{i}.jsonl", batch) for i, batch in enumerate(batches)]
    prefix = tmp_path / "resumed"
    work = tmp_path / "resumed.parts"

    finish = prepare._PartWriter.finish

    def finish_then_stop(self, input_path: Path) -> None:
        finish(self, input_path)
        if self.index == 1:
            raise Interrupted

    monkeypatch.setattr(prepare._PartWriter, "finish", finish_then_stop)
    with pytest.raises(Interrupted):
        prepare_data(config(inputs, prefix))
    assert sorted(path.name for path in work.glob("*.done.json")) == ["00000.done.json", "00001.done.json"]
    assert not Path(f"{prefix}.bin").exists()
    finished = {path.name: path.stat().st_mtime_ns for path in work.glob("00001-all.*")}
    write_jsonl(inputs[0], batches[0] + ["Un document ajouté : le fichier a changé."])  # a fixed input is redone

    monkeypatch.setattr(prepare._PartWriter, "finish", finish)
    tokenized: list[list[int]] = []
    chunks = prepare._chunks
    monkeypatch.setattr(prepare, "_chunks", lambda *args: tokenized.append(args[-1]) or chunks(*args))
    merge = prepare._merge_parts

    def check_then_merge(*args, **kwargs) -> None:
        assert {path.name: path.stat().st_mtime_ns for path in work.glob("00001-all.*")} == finished
        merge(*args, **kwargs)

    monkeypatch.setattr(prepare, "_merge_parts", check_then_merge)
    stats = prepare_data(config(inputs, prefix))

    assert tokenized == [[0, 2]]  # the changed and the unfinished input files
    texts = batches[0] + ["Un document ajouté : le fichier a changé."] + batches[1] + batches[2]
    assert read_dataset(prefix) == expected_ids(reference, texts)
    assert stats[prefix]["empty_documents"] == 2
    assert not work.exists()

    straight = tmp_path / "straight"  # the same inputs without an interruption: the same bytes
    monkeypatch.setattr(prepare, "_merge_parts", merge)
    prepare_data(config(inputs, straight))
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{straight}{suffix}").read_bytes()


def test_resuming_with_other_options_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [write_jsonl(tmp_path / f"part{i}.jsonl", DOCUMENTS[:2]) for i in range(2)]
    prefix = tmp_path / "refused"

    def stop(self, input_path: Path) -> None:
        raise Interrupted

    monkeypatch.setattr(prepare._PartWriter, "finish", stop)
    with pytest.raises(Interrupted):
        prepare_data(config(inputs, prefix, workers=1))
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"other split_at.*delete .*refused\.parts to start over"):
        prepare_data(config(inputs, prefix, workers=1, split_at=100))


def test_bad_jsonl_lines_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": text}) for text in DOCUMENTS[:5]]
    lines.insert(3, json.dumps({"content": "no text field"}))
    path.write_text("\n".join(lines) + "\n")
    where = re.escape(str(path))
    with pytest.raises(UserError, match=rf"{where}, line 4: no field 'text' \(content\): pass the text field"):
        prepare_data(config([path], tmp_path / "out", workers=1))

    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + '{"text": "unterminated\n')
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}, line 3: not valid JSON"):
        prepare_data(config([path], tmp_path / "out", workers=1))

    path.write_text(json.dumps({"text": None}) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}, line 1: field 'text' holds NoneType, not text"):
        prepare_data(config([path], tmp_path / "out", workers=1))


def test_bad_inputs_are_refused_before_tokenizing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(UserError, match=rf"input file {re.escape(str(missing))} does not exist"):
        prepare_data(config([missing], tmp_path / "out"))
    unknown = tmp_path / "data.csv"
    unknown.write_text("text\nhello\n")
    with pytest.raises(UserError, match=r"unknown extension '\.csv': use one of \.jsonl"):
        prepare_data(config([unknown], tmp_path / "out"))
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"content": ["a"]}), parquet)
    with pytest.raises(UserError, match=r"no column 'text' \(columns: content\): pass the text column"):
        prepare_data(config([parquet], tmp_path / "out"))
    assert not (tmp_path / "out.parts").exists()


def test_text_field_option_and_cli(tmp_path: Path, reference: Tokenizer) -> None:
    from lucie_nemo.cli.data import register

    app = typer.Typer()
    register(app)
    source = write_jsonl(tmp_path / "content.jsonl", DOCUMENTS[:2], field="content")
    prefix = tmp_path / "cli" / "content_text_document"
    arguments = ["prepare-data", str(source), "--tokenizer", str(TOKENIZER), "--output-prefix", str(prefix)]
    result = CliRunner().invoke(app, [*arguments, "--text-field", "content", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{prefix}: 2 documents" in result.output
    assert read_dataset(prefix) == expected_ids(reference, DOCUMENTS[:2])

    result = CliRunner().invoke(app, ["prepare-data", str(tmp_path / "nope.jsonl"), *arguments[2:]])
    assert result.exit_code == 2
    assert "does not exist" in result.output
