"""Benchmark `lucie tokenizer train` against a plain `tokenizers` BPE training on the same corpus.

The corpus is the one tests/test_tokenizer_train.py trains on: Python's standard library (about 4.7 MB of
code) and a JSONL file of prose in Lucie's languages. The baseline trains a BPE of the same
vocabulary size with `tokenizers`' BpeTrainer and whitespace splitting, nothing else (no Lucie pipeline, no
layout check, no transformers verification). The last line printed is the time ratio.

    python bench/tokenizer_train.py [--vocab-size N] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from lucie_nemo.tokenizer_train import iter_texts, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_tokenizer_train import PROSE, STDLIB  # noqa: E402  (the test's corpus, not a copy)


def corpus(folder: Path) -> list[Path]:
    jsonl = folder / "prose.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(PROSE * 200)))
    return [*STDLIB, jsonl]


def baseline(files: list[Path], vocab_size: int) -> None:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(iter_texts(files, "text"), BpeTrainer(vocab_size=vocab_size, show_progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--work-dir", type=Path, default=None)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=arguments.work_dir) as work:
        files = corpus(Path(work))
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        start = time.perf_counter()
        baseline(files, arguments.vocab_size)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        train_tokenizer(files, arguments.vocab_size, Path(work) / "tok")
        lucie = time.perf_counter() - start
    print(f"corpus {megabytes:.1f} MB, vocabulary {arguments.vocab_size:,}")
    print(f"plain tokenizers BPE:  {plain:6.1f} s")
    print(f"lucie tokenizer train: {lucie:6.1f} s (Lucie pipeline, layout check, AutoTokenizer verification)")
    print(f"lucie / plain: {lucie / plain:.2f}x")


if __name__ == "__main__":
    main()
