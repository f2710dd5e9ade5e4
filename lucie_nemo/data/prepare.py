"""Tokenize documents into Megatron indexed datasets (``PREFIX.bin``/``PREFIX.idx``), fast and resumably.

Every document is stored as the original Lucie run stored it (Lucie-Training
``tokenization/tokenizer_apply.py`` and the Megatron-DeepSpeed fork's ``_AutoTokenizer.tokenize``): its
text ``rstrip()``-ed, a text longer than 100,000 characters encoded in consecutive 100,000-character
slices (each without special tokens, ids concatenated), then ``<s> ids </s>``; an empty or
whitespace-only text is stored as ``<s></s>`` and counted. Inputs are JSON lines (one document per line,
in a text field), Parquet files (one document per row, in a text column) or plain text files (one
document per file).

Worker processes tokenize large chunks with ``Tokenizer.encode_batch_fast`` and send back numpy arrays;
the parent writes one shard per input file into ``PREFIX.parts/`` with megatron-core's
``IndexedDatasetBuilder``, marks it done, and at the end merges the shards with ``add_index`` into
temporary files that are checked, then renamed. An interrupted run, restarted with the same inputs and
options, redoes only the input files whose shard was not finished or that changed since (a fixed file).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lucie_nemo.errors import UserError
from lucie_nemo.tokenizer import BOS_ID, EOS_ID, load_tokenizer, tokenizer_dir

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".text")
ALL_OUTPUTS = "all"
SLICE_CHARACTERS = 100_000  # the fork's CHUNK_MAX: longer texts were encoded slice by slice
DOCUMENT_RULES = "rstrip; 100000-character slices; <s> ids </s>; empty kept"  # in the resume manifest


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare_data` tokenizes, with which tokenizer, and where it writes."""

    inputs: tuple[Path, ...]
    tokenizer: str  # a folder holding tokenizer.json, or a Hub id
    output_prefix: Path
    text_field: str = "text"  # JSON field or Parquet column holding the document
    workers: int = field(default_factory=default_workers)
    split_at: int | None = None  # split into documents of <= split_at tokens and longer ones
    chunk_bytes: int = 1 << 18  # input bytes per worker task
    progress: bool = True


@dataclass
class OutputStats:
    """Documents and tokens (BOS and EOS included) of one output."""

    documents: int = 0
    tokens: int = 0
    min_document_tokens: int | None = None
    max_document_tokens: int | None = None

    def add(self, lengths: np.ndarray) -> None:
        """Count documents of these lengths."""
        if len(lengths):
            self.merge(OutputStats(len(lengths), int(lengths.sum()), int(lengths.min()), int(lengths.max())))

    def merge(self, other: OutputStats) -> None:
        """Add another output's counts to these."""
        if not other.documents:
            return
        if self.documents:
            self.min_document_tokens = min(self.min_document_tokens, other.min_document_tokens)
            self.max_document_tokens = max(self.max_document_tokens, other.max_document_tokens)
        else:
            self.min_document_tokens, self.max_document_tokens = other.min_document_tokens, other.max_document_tokens
        self.documents += other.documents
        self.tokens += other.tokens


@dataclass(frozen=True)
class Chunk:
    """One worker task: a byte range of a JSONL file, a range of Parquet row groups, or a whole text file."""

    part: int  # index of the input file
    path: str
    kind: str  # "jsonl", "parquet" or "text"
    start: int  # first byte (jsonl) or row group (parquet)
    end: int  # end byte (jsonl) or row group (parquet), exclusive
    first_row: int  # parquet: index of the first row of row group `start`
    nbytes: int  # input bytes covered, for the progress bar
    last: bool  # the last chunk of its input file
    text_field: str
    dtype: str  # numpy dtype of the token ids


@dataclass
class ChunkResult:
    """The tokenized documents of a chunk, laid end to end."""

    part: int
    last: bool
    nbytes: int
    tokens: np.ndarray
    lengths: np.ndarray
    empty: int  # empty or whitespace-only documents, stored as <s></s>


def text_slices(text: str) -> list[str]:
    """The pieces the original run encoded separately for a document: its text ``rstrip()``-ed, cut into
    slices of 100,000 characters (code points, as Python slices); none for an empty or blank text."""
    text = text.rstrip()
    return [text[start : start + SLICE_CHARACTERS] for start in range(0, len(text), SLICE_CHARACTERS)]


def output_prefixes(output_prefix: Path, split_at: int | None) -> dict[str, Path]:
    """Where each output goes: ``PREFIX``, or with a split the original run's layout
    ``DIR/length-0-N/NAME`` (documents of <= N tokens) and ``DIR/length-N-inf/NAME`` (longer ones)."""
    if split_at is None:
        return {ALL_OUTPUTS: output_prefix}
    return {
        "short": output_prefix.parent / f"length-0-{split_at}" / output_prefix.name,
        "long": output_prefix.parent / f"length-{split_at}-inf" / output_prefix.name,
    }


def stats_path(prefix: Path) -> Path:
    """The stats JSON written beside an output."""
    return Path(f"{prefix}.stats.json")


def input_kind(path: Path) -> str:
    """``jsonl``, ``parquet`` or ``text`` from the file name; a UserError for anything else."""
    suffix = path.suffix.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if suffix in suffixes:
            return kind
    known = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)
    raise UserError(f"input {path} has an unknown extension {suffix or '(none)'!r}: use one of {known}")


def check_input(path: Path, text_field: str) -> str:
    """Refuse a missing input, an unknown format or a Parquet file without the text column."""
    if not path.is_file():
        raise UserError(f"input file {path} does not exist: check the path")
    kind = input_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise UserError(
                f"Parquet file {path} has no column {text_field!r} (columns: {', '.join(columns)}): "
                "pass the text column with --text-field"
            )
    return kind


def prepare_data(config: PrepareConfig) -> dict[Path, dict]:
    """Tokenize ``config.inputs`` into indexed datasets; return each output prefix with its stats."""
    if config.workers < 1:
        raise UserError(f"--workers must be at least 1, got {config.workers}")
    if config.split_at is not None and config.split_at < 2:
        raise UserError(f"--split-at must be at least 2 (BOS and EOS), got {config.split_at}")
    if not config.inputs:
        raise UserError("no input files: pass at least one .jsonl, .parquet or .txt file")
    kinds = [check_input(path, config.text_field) for path in config.inputs]
    folder = tokenizer_dir(config.tokenizer)
    outputs = output_prefixes(config.output_prefix, config.split_at)
    work = Path(f"{config.output_prefix}.parts")
    executor = _start_workers(config.workers, folder)
    try:
        from megatron.core.datasets.indexed_dataset import DType  # torch loads while the workers start

        dtype = DType.optimal_dtype(load_tokenizer(folder).get_vocab_size(with_added_tokens=True))
        _open_work_folder(work, _manifest(config, folder, dtype))
        pending = [index for index, path in enumerate(config.inputs) if not _is_done(work, index, path)]
        _tokenize(executor, config, dtype, kinds, pending, work, list(outputs))
    finally:
        executor.shutdown(cancel_futures=True)
    stats, empty = _collect_stats(work, len(kinds), list(outputs))
    results = {}
    for key, prefix in outputs.items():
        _merge_parts(work, len(kinds), key, prefix, dtype, stats[key])
        results[prefix] = _stats_json(config, key, stats[key], empty)
        _write_json(stats_path(prefix), results[prefix])
    shutil.rmtree(work)
    return results


def _manifest(config: PrepareConfig, folder: Path, dtype: type) -> dict:
    """What a work folder was started with: resuming needs the same inputs, tokenizer and options."""
    return {
        "inputs": [str(path.resolve()) for path in config.inputs],
        "tokenizer_sha256": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest(),
        "text_field": config.text_field,
        "split_at": config.split_at,
        "dtype": np.dtype(dtype).name,
        "document_rules": DOCUMENT_RULES,
    }


def _open_work_folder(work: Path, manifest: dict) -> None:
    """Create the work folder, or reuse one that an interrupted run with the same manifest left."""
    manifest_path = work / "manifest.json"
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        changed = sorted(key for key in manifest if previous.get(key) != manifest[key])
        if changed:
            raise UserError(
                f"{work} holds an interrupted run with other {', '.join(changed)}: rerun with the same "
                f"inputs and options to resume it, or delete {work} to start over"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)


def _done_marker(work: Path, index: int) -> Path:
    return work / f"{index:05d}.done.json"


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_done(work: Path, index: int, path: Path) -> bool:
    """Whether the shard of an input file is finished, from the input file as it is now."""
    marker = _done_marker(work, index)
    return marker.is_file() and json.loads(marker.read_text())["fingerprint"] == _fingerprint(path)


def _part_prefix(work: Path, index: int, key: str) -> Path:
    return work / f"{index:05d}-{key}"


def _write_json(path: Path, data: dict) -> None:
    """Write JSON under a temporary name, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _start_workers(workers: int, folder: Path) -> ProcessPoolExecutor:
    """A pool of tokenizer processes, started now so that they load the tokenizer while the parent prepares."""
    executor = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),  # workers need only the tokenizer, not torch
        initializer=_init_worker,
        initargs=(str(folder),),
    )
    for _ in range(workers):  # each task submitted to a busy pool starts one more worker process
        executor.submit(int)
    return executor


def _tokenize(
    executor: ProcessPoolExecutor,
    config: PrepareConfig,
    dtype: type,
    kinds: list[str],
    pending: list[int],
    work: Path,
    keys: list[str],
) -> None:
    """Tokenize the pending input files in the pool, one finished shard per input file."""
    from tqdm import tqdm

    total = sum(config.inputs[index].stat().st_size for index in pending)
    chunks = _chunks(config, np.dtype(dtype).name, kinds, pending)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not config.progress) as bar:
        writer = None
        tokens = 0
        for result in _ordered_map(executor, chunks, window=4 * config.workers):
            writer = writer or _PartWriter(work, result.part, keys, dtype, config.split_at)
            writer.add(result)
            tokens += int(result.lengths.sum())
            bar.set_postfix_str(f"{tokens / 1e6:.1f}M tokens", refresh=False)
            bar.update(result.nbytes)
            if result.last:
                writer.finish(config.inputs[result.part])
                writer = None


def _ordered_map(executor: ProcessPoolExecutor, chunks: Iterator[Chunk], window: int) -> Iterator[ChunkResult]:
    """Tokenize chunks in the pool, in order, with at most ``window`` chunks in flight (bounded memory)."""
    in_flight: deque[Future] = deque()
    for chunk in chunks:
        in_flight.append(executor.submit(_tokenize_chunk, chunk))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _chunks(config: PrepareConfig, dtype: str, kinds: list[str], pending: list[int]) -> Iterator[Chunk]:
    """The worker tasks of the pending input files, in input order."""
    for index in pending:
        path, kind = config.inputs[index], kinds[index]
        if kind == "jsonl":
            ranges = _jsonl_ranges(path, config.chunk_bytes)
        elif kind == "parquet":
            ranges = _parquet_ranges(path)
        else:
            ranges = iter([(0, 0, 0, path.stat().st_size, True)])
        for start, end, first_row, nbytes, last in ranges:
            yield Chunk(index, str(path), kind, start, end, first_row, nbytes, last, config.text_field, dtype)


def _jsonl_ranges(path: Path, chunk_bytes: int) -> Iterator[tuple[int, int, int, int, bool]]:
    """Byte ranges of about ``chunk_bytes`` that end at line ends (one empty range for an empty file)."""
    size = path.stat().st_size
    start = 0
    with path.open("rb") as file:
        while True:
            end = min(start + chunk_bytes, size)
            if end < size:
                file.seek(end - 1)
                file.readline()
                end = min(file.tell(), size)
            yield start, end, 0, end - start, end == size
            if end == size:
                return
            start = end


def _parquet_ranges(path: Path) -> Iterator[tuple[int, int, int, int, bool]]:
    """One range per row group (one empty range for a file without row groups)."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    size = path.stat().st_size
    groups = metadata.num_row_groups
    if groups == 0:
        yield 0, 0, 0, size, True
        return
    rows = [metadata.row_group(group).num_rows for group in range(groups)]
    total = max(sum(rows), 1)
    first = 0
    for group, count in enumerate(rows):
        nbytes = size * (first + count) // total - size * first // total
        yield group, group + 1, first, nbytes, group == groups - 1
        first += count


class _PartWriter:
    """The shard(s) of one input file, written under temporary names and renamed when complete."""

    def __init__(self, work: Path, index: int, keys: list[str], dtype: type, split_at: int | None) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.work, self.index, self.split_at = work, index, split_at
        self.builders = {key: IndexedDatasetBuilder(f"{self._tmp(key)}.bin", dtype=dtype) for key in keys}
        self.stats = {key: OutputStats() for key in keys}
        self.empty = 0

    def _tmp(self, key: str) -> str:
        return f"{_part_prefix(self.work, self.index, key)}.tmp"

    def add(self, result: ChunkResult) -> None:
        """Append a chunk's documents, each to the output its length selects."""
        self.empty += result.empty
        ends = np.cumsum(result.lengths).tolist()
        starts = [0, *ends[:-1]]
        for key, selected in self._select(result.lengths).items():
            builder = self.builders[key]
            for position in np.flatnonzero(selected).tolist():
                start, end = starts[position], ends[position]
                builder.add_document(result.tokens[start:end], [end - start])
            self.stats[key].add(result.lengths[selected])

    def _select(self, lengths: np.ndarray) -> dict[str, np.ndarray]:
        if self.split_at is None:
            return {ALL_OUTPUTS: np.ones(len(lengths), dtype=bool)}
        return {"short": lengths <= self.split_at, "long": lengths > self.split_at}

    def finish(self, input_path: Path) -> None:
        """Close the shards, rename them into place, then write the done marker."""
        for key, builder in self.builders.items():
            builder.finalize(f"{self._tmp(key)}.idx")
            final = _part_prefix(self.work, self.index, key)
            os.replace(f"{self._tmp(key)}.bin", f"{final}.bin")
            os.replace(f"{self._tmp(key)}.idx", f"{final}.idx")
        marker = {
            "input": str(input_path),
            "fingerprint": _fingerprint(input_path),
            "empty_documents": self.empty,
            "outputs": {key: asdict(stats) for key, stats in self.stats.items()},
        }
        _write_json(_done_marker(self.work, self.index), marker)


def _collect_stats(work: Path, count: int, keys: list[str]) -> tuple[dict[str, OutputStats], int]:
    """Add up the done markers of all shards."""
    stats = {key: OutputStats() for key in keys}
    empty = 0
    for index in range(count):
        marker = json.loads(_done_marker(work, index).read_text())
        empty += marker["empty_documents"]
        for key in keys:
            stats[key].merge(OutputStats(**marker["outputs"][key]))
    return stats, empty


def _merge_parts(work: Path, count: int, key: str, prefix: Path, dtype: type, expected: OutputStats) -> None:
    """Concatenate the shards of one output into temporary files, check them, and rename them into place."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp"
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    for index in range(count):
        builder.add_index(str(_part_prefix(work, index, key)))
    builder.finalize(f"{tmp}.idx")
    _verify(tmp, expected, dtype, work)
    os.replace(f"{tmp}.bin", f"{prefix}.bin")
    os.replace(f"{tmp}.idx", f"{prefix}.idx")


def _verify(prefix: str, expected: OutputStats, dtype: type, work: Path) -> None:
    """Read a merged dataset back and compare its documents and tokens with the shards' done markers;
    on a mismatch (a shard damaged since it was finished) remove the merged files and refuse."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    size = os.path.getsize(f"{prefix}.bin")
    if expected.documents == 0:  # numpy cannot map an empty .bin: an output with no document (a split side)
        documents = tokens = 0
    else:
        dataset = IndexedDataset(prefix)
        documents, tokens = len(dataset), int(dataset.sequence_lengths.sum())
        del dataset
    if (documents, tokens, size) != (expected.documents, expected.tokens, expected.tokens * np.dtype(dtype).itemsize):
        for suffix in (".bin", ".idx"):
            os.remove(f"{prefix}{suffix}")
        raise UserError(
            f"merged dataset {prefix} has {documents} documents and {tokens} tokens ({size} bytes), "
            f"expected {expected.documents} and {expected.tokens}: the shards in {work} do not match their "
            f"done markers: delete {work} and rerun"
        )


def _stats_json(config: PrepareConfig, key: str, stats: OutputStats, empty: int) -> dict:
    """The content of an output's stats file."""
    selection = {ALL_OUTPUTS: "all", "short": f"<= {config.split_at}", "long": f"> {config.split_at}"}[key]
    return {
        **asdict(stats),
        "empty_documents": empty,
        "document_tokens": selection,
        "inputs": [str(path) for path in config.inputs],
        "tokenizer": str(config.tokenizer),
        "text_field": config.text_field,
    }


# Worker processes --------------------------------------------------------------------------------

_worker: dict = {}


def _init_worker(tokenizer_folder: str) -> None:
    """Load the tokenizer once per worker; each worker is single-threaded (the pool fills the cores)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker["tokenizer"] = load_tokenizer(tokenizer_folder)


def _tokenize_chunk(chunk: Chunk) -> ChunkResult:
    """Read, tokenize and frame (BOS ... EOS) the documents of one chunk, by the original run's rules."""
    texts = _read_chunk(chunk)
    slices = [text_slices(text) for text in texts]
    pieces_of_chunk = [piece for pieces in slices for piece in pieces]
    encodings = iter(_worker["tokenizer"].encode_batch_fast(pieces_of_chunk, add_special_tokens=False))
    flat: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for document, pieces in enumerate(slices):
        start = len(flat)
        flat.append(BOS_ID)
        for _ in pieces:
            flat.extend(next(encodings).ids)
        flat.append(EOS_ID)
        lengths[document] = len(flat) - start
    tokens = np.array(flat, dtype=chunk.dtype)
    empty = sum(1 for pieces in slices if not pieces)
    return ChunkResult(chunk.part, chunk.last, chunk.nbytes, tokens, lengths, empty)


def _read_chunk(chunk: Chunk) -> list[str]:
    if chunk.kind == "jsonl":
        return _read_jsonl(chunk)
    if chunk.kind == "parquet":
        return _read_parquet(chunk)
    try:
        return [Path(chunk.path).read_text(encoding="utf-8")]
    except UnicodeDecodeError as error:
        raise UserError(f"{chunk.path} is not UTF-8 text (byte {error.start}): convert it to UTF-8") from None


def _read_jsonl(chunk: Chunk) -> list[str]:
    """The text field of each non-blank line of a byte range, with errors naming file and line."""
    with open(chunk.path, "rb") as file:
        file.seek(chunk.start)
        data = file.read(chunk.end - chunk.start)
    texts = []
    for number, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            where = _line_name(chunk, number)
            raise UserError(f"{where}: not valid JSON ({error}): each line must hold one JSON object") from None
        if not isinstance(record, dict) or chunk.text_field not in record:
            fields = ", ".join(record) if isinstance(record, dict) else f"a {type(record).__name__}, not an object"
            raise UserError(
                f"{_line_name(chunk, number)}: no field {chunk.text_field!r} ({fields}): "
                "pass the text field with --text-field"
            )
        text = record[chunk.text_field]
        if not isinstance(text, str):
            raise UserError(
                f"{_line_name(chunk, number)}: field {chunk.text_field!r} holds {type(text).__name__}, not text"
            )
        texts.append(text)
    return texts


def _line_name(chunk: Chunk, number_in_chunk: int) -> str:
    """``FILE, line N`` (1-based) for a line of a chunk; counts the lines before the chunk."""
    before, remaining = 0, chunk.start
    with open(chunk.path, "rb") as file:
        while remaining > 0:
            block = file.read(min(1 << 20, remaining))
            before += block.count(b"\n")
            remaining -= len(block)
    return f"{chunk.path}, line {before + number_in_chunk + 1}"


def _read_parquet(chunk: Chunk) -> list[str]:
    """The text column of a range of row groups; a null is an error naming its row."""
    import pyarrow.parquet as pq

    if chunk.start == chunk.end:
        return []
    table = pq.ParquetFile(chunk.path).read_row_groups(list(range(chunk.start, chunk.end)), columns=[chunk.text_field])
    texts = table.column(0).to_pylist()
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(
                f"{chunk.path}, row {chunk.first_row + number} (counting from 0): column {chunk.text_field!r} "
                f"holds {type(text).__name__}, not text"
            )
    return texts
