"""Benchmark `lucie prepare-data` against the approach of Megatron-LM's tools/preprocess_data.py.

Both tokenize the same input (the demo corpus built larger, its languages concatenated into one JSONL)
with the same tokenizer object (``tokenizer.json`` loaded as is by `lucie_nemo.tokenizer.load_tokenizer`)
and the same number of worker processes, into token-identical Megatron indexed datasets (checked here): both
apply the original Lucie run's document rules (rstrip, 100,000-character slices, <s> ... </s>).
The baseline re-implements preprocess_data.py's approach: a ``multiprocessing.Pool`` mapping ``imap``
over the input lines with chunksize 25, each call parsing and tokenizing one document (BOS from the
tokenizer's template, EOS appended), and the parent writing each document with
``IndexedDatasetBuilder.add_document``. Times run from the start of each approach to its finished
output, imports excluded, with the CPU time of all their processes beside (a fairer measure on a busy
machine); with ``--repeat N`` the two alternate N times and the best of each counts. The last line printed
is the speed ratio in tokens/s.

    python bench/prepare_data.py [--tokenizer DIR] [--workers N] [--corpus-mb MB] [--repeat N] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

from lucie_nemo.data.demo_corpus import build_demo_corpus
from lucie_nemo.data.prepare import SLICE_CHARACTERS, PrepareConfig, default_workers, prepare_data
from lucie_nemo.tokenizer import BOS_ID, EOS_ID, load_tokenizer

BASELINE_CHUNKSIZE = 25
_baseline_tokenizer = {}


def _baseline_init(tokenizer_folder: str) -> None:
    _baseline_tokenizer["tokenizer"] = load_tokenizer(tokenizer_folder)


def _baseline_encode(line: str) -> tuple[list[int], int]:
    """One document per call, as preprocess_data.py's Encoder.encode, with the original Lucie run's rules
    (Lucie-Training's Encoder.encode and the fork's _AutoTokenizer.tokenize): rstrip, a text over 100,000
    characters encoded slice by slice without special tokens, then BOS ... EOS; a shorter text encoded with
    the tokenizer's template (BOS) and EOS appended."""
    text = json.loads(line)["text"].rstrip()
    tokenizer = _baseline_tokenizer["tokenizer"]
    if len(text) > SLICE_CHARACTERS:
        ids = [BOS_ID]
        for start in range(0, len(text), SLICE_CHARACTERS):
            ids += tokenizer.encode(text[start : start + SLICE_CHARACTERS], add_special_tokens=False).ids
    else:
        ids = tokenizer.encode(text).ids
    ids.append(EOS_ID)
    return ids, len(line)


def run_baseline(input_path: Path, tokenizer: str, workers: int, prefix: Path) -> None:
    """Megatron-LM's preprocess_data.py approach."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    vocab_size = load_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab_size))
    with (
        input_path.open(encoding="utf-8") as lines,
        multiprocessing.Pool(workers, initializer=_baseline_init, initargs=(tokenizer,)) as pool,
    ):
        for ids, _ in pool.imap(_baseline_encode, lines, BASELINE_CHUNKSIZE):
            builder.add_document(ids, [len(ids)])
    builder.finalize(f"{prefix}.idx")


def run_lucie(input_path: Path, tokenizer: str, workers: int, prefix: Path) -> None:
    """`lucie prepare-data`."""
    prepare_data(PrepareConfig((input_path,), tokenizer, prefix, workers=workers, progress=False))


def cpu_seconds() -> float:
    """User and system time of this process and of its finished child processes."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def timed(run, *args) -> tuple[float, float]:
    """Wall and CPU seconds (workers included) of one run."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def compare(baseline: Path, lucie: Path) -> tuple[int, int]:
    """Read both datasets back and require the same documents, token for token; returns (documents, tokens)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    a, b = IndexedDataset(str(baseline)), IndexedDataset(str(lucie))
    if len(a) != len(b) or not np.array_equal(a.sequence_lengths, b.sequence_lengths):
        raise SystemExit(f"outputs differ: {len(a)} and {len(b)} documents, or different lengths")
    for index in range(len(a)):
        if not np.array_equal(a[index], b[index]):
            raise SystemExit(f"outputs differ at document {index}")
    return len(a), int(a.sequence_lengths.sum())


def concatenated_corpus(work_dir: Path, corpus_mb: float) -> Path:
    """The demo corpus of ``corpus_mb`` MB as one JSONL file (built or reused under ``work_dir``)."""
    path = work_dir / f"demo-{corpus_mb:g}MB.jsonl"
    if not path.is_file():
        parts = build_demo_corpus(work_dir / "corpus", corpus_mb)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared" / "lucie" / "tokenizer"),
                        help="folder holding tokenizer.json (default: the real Lucie tokenizer in ../shared)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--corpus-mb", type=float, default=60.0, help="demo corpus size (MB of text)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two runs N times, keep the best")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "lucie-bench-prepare-data")
    args = parser.parse_args()

    import megatron.core.datasets.indexed_dataset  # noqa: F401  (imports out of the timings)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    corpus = concatenated_corpus(args.work_dir, args.corpus_mb)
    corpus.read_bytes()  # both runs read from the page cache
    outputs = args.work_dir / "outputs"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir()
    print(f"input: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), {args.workers} workers, best of {args.repeat}")

    best = {"baseline": (math.inf, math.inf), "lucie": (math.inf, math.inf)}
    for _ in range(args.repeat):
        for name, run in (("baseline", run_baseline), ("lucie", run_lucie)):
            wall, cpu = timed(run, corpus, args.tokenizer, args.workers, outputs / name)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    documents, tokens = compare(outputs / "baseline", outputs / "lucie")
    print(f"outputs token-identical: {documents:,} documents, {tokens:,} tokens")
    for name, label in (("baseline", "megatron-lm preprocess_data approach"), ("lucie", "lucie prepare-data")):
        wall, cpu = best[name]
        print(
            f"{label + ':':38} {wall:6.2f} s, {tokens / wall:>11,.0f} tokens/s "
            f"(CPU {cpu:6.2f} s, {tokens / cpu:>9,.0f} tokens per CPU second)"
        )
    ratio = best["baseline"][0] / best["lucie"][0]
    print(f"speed-up: {ratio:.2f}x (lucie prepare-data over the preprocess_data approach, {args.workers} workers)")


if __name__ == "__main__":
    main()
