"""Train a tokenizer with Lucie's recipe: byte-fallback BPE on Lucie's own normalizer, same id layout.

Ids 0..3 are ``<s> </s> <unk> <pad>``, 4..259 the byte tokens ``<0x00>``..``<0xFF>``, 260..299
reserved ``<unusedN>`` entries, then the learned alphabet and merges. The normalizer, decoder and
BOS post-processor are Lucie's, copied verbatim from its ``tokenizer.json`` (package data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.trainers import BpeTrainer

from lucie_nemo.errors import UserError
from lucie_nemo.staging import staged_folder
from lucie_nemo.tokenizer import (
    RESERVED_IDS,
    SPECIAL_TOKENS,
    check_layout,
    load_hf_tokenizer,
    lucie_pipeline,
    write_hf_config,
)

# Training-time split of the normalized text (Lucie's tokenizer.json has no pre-tokenizer): words with
# their leading ▁, runs of punctuation, single digits, runs of ▁ (indentation), newlines, tabs. No merge
# crosses these pieces, so digits stay single and no token has a ▁ after another character than ▁.
TRAINING_SPLIT = r"▁?[\p{L}\p{M}]+|▁?[^\p{L}\p{M}\p{N}\s▁]+|\p{N}|▁+(?=▁)|▁|\n+|\t+|\s+"
# Characters always in the alphabet, whatever the corpus: ▁, newline, tab and printable ASCII.
INITIAL_ALPHABET = ["▁", "\n", "\t", *(chr(code) for code in range(0x21, 0x7F))]
MAX_ALPHABET = 1000  # about the size of Lucie's learned alphabet; rarer characters use byte fallback
MIN_VOCAB_SIZE = 1024
TEXT_CHUNK_CHARS = 1 << 16


def fixed_tokens() -> list[str]:
    """The 300 tokens at ids 0..299: special, byte and reserved tokens."""
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    return [*SPECIAL_TOKENS, *byte_tokens, *(f"<unused{index}>" for index in range(len(RESERVED_IDS)))]


def iter_texts(files: Iterable[Path], text_field: str) -> Iterator[str]:
    """Texts of the corpus: the ``text_field`` of each ``.jsonl`` record, plain files in chunks of lines."""
    for path in files:
        try:
            yield from (_jsonl_texts(path, text_field) if path.suffix == ".jsonl" else _text_chunks(path))
        except UnicodeDecodeError as error:
            raise UserError(f"{path} is not UTF-8 text ({error}): convert it to UTF-8 or leave it out") from None


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number} is not valid JSON ({error}): fix or remove that line") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path}:{number} has no string field {text_field!r}: pass the right --text-field")
            yield text


def _text_chunks(path: Path) -> Iterator[str]:
    """Whole lines, newlines kept, about `TEXT_CHUNK_CHARS` characters at a time."""
    chunk: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            chunk.append(line)
            size += len(line)
            if size >= TEXT_CHUNK_CHARS:
                yield "".join(chunk)
                chunk, size = [], 0
    if chunk:
        yield "".join(chunk)


def _untrained() -> Tokenizer:
    """An empty byte-fallback BPE with Lucie's normalizer and decoder, and the training split."""
    pipeline = lucie_pipeline()
    return Tokenizer.from_str(
        json.dumps(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": [],
                "normalizer": pipeline["normalizer"],
                "pre_tokenizer": {
                    "type": "Split",
                    "pattern": {"Regex": TRAINING_SPLIT},
                    "behavior": "Isolated",
                    "invert": False,
                },
                "post_processor": None,
                "decoder": pipeline["decoder"],
                "model": {**pipeline["model"], "vocab": {}, "merges": []},
            }
        )
    )


def _with_lucie_pipeline(trained: Tokenizer) -> str:
    """``tokenizer.json`` text: the trained vocabulary and merges in Lucie's pipeline sections, verbatim.

    Only <s> </s> <unk> <pad> stay added tokens; byte and reserved tokens are plain vocabulary, as in Lucie.
    """
    pipeline = lucie_pipeline()
    data = json.loads(trained.to_str())
    for section in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        data[section] = pipeline[section]
    data["model"].update(pipeline["model"])
    return json.dumps(data, indent=2, ensure_ascii=False)


def train_tokenizer(
    files: Iterable[str | os.PathLike], vocab_size: int, output: str | os.PathLike, text_field: str = "text"
) -> Path:
    """Train on plain text and JSONL ``files``; write a verified tokenizer folder to ``output``."""
    paths = [Path(file) for file in files]
    if not paths:
        raise UserError("no corpus file given: pass one or more plain text or .jsonl files")
    for path in paths:
        if not path.is_file():
            raise UserError(f"corpus file {path} does not exist: pass existing plain text or .jsonl files")
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"vocabulary size {vocab_size} is too small: pass --vocab-size {MIN_VOCAB_SIZE} or more")
    fixed = fixed_tokens()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=fixed,
        initial_alphabet=INITIAL_ALPHABET,
        limit_alphabet=min(MAX_ALPHABET, (vocab_size - len(fixed)) // 2),
        show_progress=False,
    )
    tokenizer = _untrained()
    tokenizer.train_from_iterator(iter_texts(paths, text_field), trainer)
    tokenizer_json = _with_lucie_pipeline(tokenizer)
    check_layout(Tokenizer.from_str(tokenizer_json))
    out = Path(output)
    with staged_folder(out, replace_files=True) as staging:
        (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        write_hf_config(staging, lucie_pipeline()["chat_template"])
        load_hf_tokenizer(staging)
    return out
