"""`lucie data build`: the datasets of a phase's blend, made from the public Lucie dataset.

For each prefix that `lucie_nemo.data.sources` resolves: download its Parquet files
(``huggingface_hub.snapshot_download`` with ``allow_patterns``: resumable, with progress), keep the rows of
its filter (Claire subsets, into ``DATA_ROOT/.build/filtered/``), and tokenize them in file order with
`prepare_data` (the original run's rules) into ``DATA_ROOT/PREFIX``. Phase 2's prefixes
``lucie_tokens_65k_splitted/length-0-4096/NAME`` and ``.../length-4096-inf/NAME`` come from one run split
at 4,096 tokens. A prefix whose outputs are complete (``.bin``, ``.idx`` and a stats file that agrees with
them) is skipped, and `prepare_data` resumes an interrupted one, so a killed build rerun gives the same
bytes. The build ends by writing ``DATA_ROOT/blend-PHASE.txt`` (the built prefixes, weights renormalized
when some prefix has no public data) and checking it as ``lucie data blend --check`` does. The two steps
also run alone (``step``): the Slurm jobs of ``cluster/data_jobs.py`` build the datasets, then one job
writes and checks the blend file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lucie_nemo.data.blends import original_counts, phase_blend, validate_blend
from lucie_nemo.data.prepare import PrepareConfig, default_workers, output_prefixes, prepare_data, stats_path
from lucie_nemo.data.sources import DATASET, REVISION, PrefixSource, list_dataset_files, phase_sources
from lucie_nemo.errors import UserError

SPLIT_FOLDER = re.compile(r"^(?P<root>.+)/length-(?P<low>\d+)-(?P<high>\d+|inf)$")
BUILD_FOLDER = ".build"  # downloads and filtered inputs, under the data root
STEPS = ("all", "datasets", "blend")  # build and write the blend file; only build; only write and check it


@dataclass(frozen=True)
class BuildConfig:
    """Which phase to build, from which dataset revision, into which data root."""

    phase: str
    data_root: Path
    tokenizer: str  # a folder holding tokenizer.json, or a Hub id
    dataset: str = DATASET
    revision: str = REVISION
    endpoint: str | None = None
    only: tuple[str, ...] = ()  # prefixes or dataset names; all of the blend's when empty
    step: str = "all"  # "datasets": build without writing the blend file; "blend": only write and check it
    workers: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class BuildTask:
    """One `prepare_data` run: the files of one dataset name, into one output prefix (or a split pair)."""

    output_prefix: str  # relative to the data root
    split_at: int | None
    files: tuple[str, ...]  # dataset paths, in concatenation order
    row_filter: tuple[tuple[str, str], ...]
    bytes: int
    prefixes: tuple[str, ...]  # the blend prefixes it writes
    revision: str = REVISION  # the dataset branch its files are read at

    def outputs(self, data_root: Path) -> list[Path]:
        return list(output_prefixes(data_root / self.output_prefix, self.split_at).values())


def build_tasks(sources: list[PrefixSource]) -> list[BuildTask]:
    """Group the blend's prefixes into runs: phase 2's short and long prefixes of one name share one run."""
    tasks: dict[str, BuildTask] = {}
    for source in sources:
        if not source.files:
            continue
        folder, name = str(PurePosixPath(source.prefix).parent), PurePosixPath(source.prefix).name
        split = SPLIT_FOLDER.match(folder)
        if split:  # the original split at N tokens: length-0-N and length-N-inf
            low, high = split["low"], split["high"]
            split_at = int(high) if low == "0" else int(low)
            output, split_value = f"{split['root']}/{name}", split_at
        else:
            output, split_value = source.prefix, None
        known = tasks.get(output)
        if known and (known.split_at != split_value or known.files != tuple(source.files)
                      or known.revision != source.revision):
            raise UserError(f"prefixes of {output} disagree on their files or split: check the blend file")
        prefixes = (*known.prefixes, source.prefix) if known else (source.prefix,)
        tasks[output] = BuildTask(output, split_value, tuple(source.files),
                                  tuple(sorted((source.row_filter or {}).items())), source.bytes, prefixes,
                                  source.revision)
    return list(tasks.values())


def check_writable(data_root: Path) -> None:
    """Refuse a data root that cannot be created or written, before any download."""
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(
            f"data root {data_root} is not writable ({error.strerror or error}): choose a folder you can write"
        ) from None


def is_complete(task: BuildTask, data_root: Path) -> bool:
    """Whether every output of a task has its .bin, .idx and a stats file that agrees with them."""
    for prefix in task.outputs(data_root):
        stats = stats_path(prefix)
        if not (stats.is_file() and Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file()):
            return False
        expected = json.loads(stats.read_text())
        if os.path.getsize(f"{prefix}.bin") != expected["tokens"] * 2:  # uint16 ids (65,024 entries)
            return False
    return True


def download(config: BuildConfig, revision: str, files: list[str]) -> Path:
    """Download (or reuse) these dataset files of ``revision``; returns the folder that mirrors the dataset's
    layout at that revision."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    local = config.data_root / BUILD_FOLDER / "hub" / f"{config.dataset.replace('/', '--')}@{revision}"
    silence = not config.progress and not are_progress_bars_disabled()
    if silence:  # huggingface_hub reads HF_HUB_DISABLE_PROGRESS_BARS once, at import: switch its bars off here
        disable_progress_bars()
    try:
        snapshot_download(config.dataset, repo_type="dataset", revision=revision, allow_patterns=files,
                          local_dir=local, endpoint=config.endpoint)
    except HfHubHTTPError as error:
        said = error.server_message or str(error).splitlines()[0]
        raise UserError(f"downloading {config.dataset}@{revision} failed: {said}") from None
    except (httpx.TransportError, OSError) as error:
        raise UserError(f"cannot download {config.dataset}@{revision} ({error}): check the network") from None
    finally:
        if silence:
            enable_progress_bars()
    return local


def filtered_input(task: BuildTask, local: Path, work: Path) -> list[Path]:
    """The task's Parquet files, or for a row filter one Parquet file of the matching rows' text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [local / path for path in task.files]
    needed = ("text", "extra") if task.row_filter else ("text",)
    for path in paths:  # the dataset's own columns: a file without them is damaged or of another revision
        columns = pq.read_schema(path).names
        for column in needed:
            if column not in columns:
                raise UserError(f"Parquet file {path} has no column {column!r} (columns: {', '.join(columns)}): "
                                "re-download it (delete it and rerun) or check --revision")
    if not task.row_filter:
        return paths
    out = work / f"{PurePosixPath(task.output_prefix).name}.parquet"
    if out.is_file():
        return [out]
    wanted = dict(task.row_filter)
    texts: list[str] = []
    for path in paths:
        table = pq.read_table(path, columns=["text", "extra"])
        for text, extra in zip(table.column("text").to_pylist(), table.column("extra").to_pylist()):
            fields = json.loads(extra) if extra else {}
            if all(str(fields.get(key)) == value for key, value in wanted.items()):
                texts.append(text)
    work.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp)
    os.replace(tmp, out)
    return [out]


def build_phase(config: BuildConfig, echo=print) -> Path | None:
    """Download and prepare every prefix of the phase; returns the blend file written and checked (None
    for the ``datasets`` step). The ``blend`` step builds nothing: it refuses an incomplete prefix."""
    if config.step not in STEPS:
        raise UserError(f"unknown step {config.step!r}: choose one of {', '.join(STEPS)}")
    check_writable(config.data_root)
    files = list_dataset_files(config.dataset, config.revision, config.endpoint)
    report = phase_sources(config.phase, files, config.dataset, config.revision, only=config.only,
                           files_at=lambda branch: list_dataset_files(config.dataset, branch, config.endpoint))
    for source in report.unmatched:
        echo(f"skipped {source.prefix}: {source.missing}")
    tasks = build_tasks(report.sources)
    pending = [task for task in tasks if not is_complete(task, config.data_root)]
    for task in tasks:
        if task not in pending:
            echo(f"complete: {task.output_prefix}")
    if pending and config.step == "blend":
        raise UserError(f"{len(pending)} dataset(s) of the {config.phase} blend are not built, e.g. "
                        f"{pending[0].output_prefix}: build them first (the same command with --step all)")
    if pending:
        revisions = sorted({task.revision for task in pending})
        local = {revision: download(config, revision, sorted({path for task in pending if task.revision == revision
                                                               for path in task.files}))
                 for revision in revisions}
        for task in pending:
            inputs = filtered_input(task, local[task.revision], config.data_root / BUILD_FOLDER / "filtered")
            prepare_data(PrepareConfig(
                inputs=tuple(inputs), tokenizer=config.tokenizer, output_prefix=config.data_root / task.output_prefix,
                workers=config.workers or default_workers(), split_at=task.split_at, progress=config.progress,
            ))
            echo(f"built: {task.output_prefix}")
    if config.step == "datasets":
        return None
    blend_file = write_checked_blend(config, report.sources)
    compare_with_original(config, tasks, echo)
    return blend_file


def compare_with_original(config: BuildConfig, tasks: list[BuildTask], echo) -> None:
    """Name every built prefix whose document or token count differs from the original run's (the blend CSVs'
    ``total_sequences`` and ``total_tokens``)."""
    original = original_counts(config.phase)
    if not original:
        echo(f"no document or token counts of the original {config.phase} datasets to compare with")
        return
    differ, compared = [], 0
    for prefix in (prefix for task in tasks for prefix in task.prefixes if prefix in original):
        stats = json.loads(stats_path(config.data_root / prefix).read_text())
        compared += 1
        documents, tokens = original[prefix]
        if (stats["documents"], stats["tokens"]) != (documents, tokens):
            differ.append(prefix)
            echo(f"differs from the original run: {prefix}: {stats['documents']:,} documents, "
                 f"{stats['tokens']:,} tokens (original: {documents:,}, {tokens:,})")
    echo(f"{compared - len(differ)} of {compared} built prefixes have the original run's document and token counts")


def write_checked_blend(config: BuildConfig, sources: list[PrefixSource]) -> Path:
    """Write ``DATA_ROOT/blend-PHASE.txt`` (WEIGHT PATH pairs of the built prefixes) and check it."""
    built = [source for source in sources if source.files]
    if not built:
        raise UserError(f"no prefix of the {config.phase} blend has public data at {config.revision}: nothing built")
    total = math.fsum(source.weight for source in built)
    path = config.data_root / f"blend-{config.phase}.txt"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{source.weight / total!r} {source.prefix}\n" for source in built))
    os.replace(tmp, path)
    validate_blend(phase_blend(config.phase, config.data_root, path))
    return path
