"""`lucie prepare-data` stores documents by the original Lucie run's rules (rstrip, 100,000-character
slices, <s> ... </s>, empty documents kept), checked against a plain rewrite of them (original_rules.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from lucie_nemo.data.prepare import PrepareConfig, prepare_data, stats_path, text_slices
from original_rules import CHUNK_MAX, original_ids

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
FILLER = "Über den Wolken, l’été « chaud » (à 14 h 30) ; ¿dónde? 😀 città perché.\n"


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))


def prepare(tmp_path: Path, texts: list[str], kind: str = "jsonl") -> tuple[list[list[int]], dict]:
    """Tokenize ``texts`` with prepare-data (2 workers, small chunks); the stored documents and the stats."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if kind == "jsonl":
        source = tmp_path / "docs.jsonl"
        source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    else:
        source = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": texts}), source, row_group_size=2)
    prefix = tmp_path / kind
    config = PrepareConfig((source,), str(TOKENIZER), prefix, workers=2, chunk_bytes=256, progress=False)
    prepare_data(config)
    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))], json.loads(stats_path(prefix).read_text())


def test_trailing_whitespace_is_stripped(tmp_path: Path, reference: Tokenizer) -> None:
    texts = ["Fin de ligne.", "Fin de ligne.\n", "Fin de ligne.   ", "Fin de ligne.\t\t", "Fin de ligne.\r\n",
             "Fin de ligne. \t\r\n\n  ", "  Début gardé\n\tet milieu gardé.\n"]
    stored, _ = prepare(tmp_path, texts)

    assert stored == [original_ids(reference, text) for text in texts]
    assert all(ids == stored[0] for ids in stored[:6])  # trailing spaces, tabs, \n and \r\n do not count
    assert stored[0] == [0, *reference.encode("Fin de ligne.", add_special_tokens=False).ids, 1]
    assert reference.encode("Fin de ligne.\n").ids != reference.encode("Fin de ligne.").ids  # the rule matters
    assert stored[6][:3] == reference.encode("  Début").ids[:3]  # leading whitespace is kept


def test_empty_and_blank_documents_are_stored_as_bos_eos_and_counted(tmp_path: Path, reference: Tokenizer) -> None:
    texts = ["", "Un mot.", " \n\t \r\n", "\u00a0\u2003\n"]  # Python's rstrip also strips Unicode spaces
    for kind in ("jsonl", "parquet"):
        stored, stats = prepare(tmp_path, texts, kind)
        assert stored == [[0, 1], original_ids(reference, "Un mot."), [0, 1], [0, 1]]
        assert (stats["documents"], stats["empty_documents"]) == (4, 3)
        assert (stats["tokens"], stats["min_document_tokens"]) == (6 + len(stored[1]), 2)


def long_document() -> str:
    """Over 200,000 characters; characters 100,000 and 200,000 start slices inside words of multi-byte
    characters (the slices' byte offsets fall inside characters), and trailing whitespace to strip."""
    body = (FILLER * 3000)[: CHUNK_MAX - 4] + "éèêëàâäîï" + FILLER * 1500
    body = body[: 2 * CHUNK_MAX - 3] + "ßüœæøå" + FILLER * 10
    return body + " \t\n\r\n"


def test_a_long_document_is_encoded_in_100000_character_slices(tmp_path: Path, reference: Tokenizer) -> None:
    text = long_document()
    stripped = text.rstrip()
    assert len(stripped) > 2 * CHUNK_MAX
    for boundary in (CHUNK_MAX, 2 * CHUNK_MAX):
        assert stripped[boundary - 1].isalpha() and stripped[boundary].isalpha()  # inside a word
        assert len(stripped[boundary].encode()) > 1 and len(stripped[boundary - 1].encode()) > 1
    with pytest.raises(UnicodeDecodeError):
        stripped.encode()[:CHUNK_MAX].decode()  # a byte slice would cut a character
    assert [len(piece) for piece in text_slices(text)] == [CHUNK_MAX, CHUNK_MAX, len(stripped) - 2 * CHUNK_MAX]

    stored, stats = prepare(tmp_path, ["Court.\n", text, "Fin."])

    expected = original_ids(reference, text)
    assert stored[1] == expected
    assert stored == [original_ids(reference, "Court.\n"), expected, original_ids(reference, "Fin.")]
    assert expected != reference.encode(stripped).ids + [1]  # the slices tokenize differently from the whole
    assert stats["max_document_tokens"] == len(expected)
