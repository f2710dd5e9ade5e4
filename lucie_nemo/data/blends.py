"""The data blend of each phase: which indexed datasets it samples, with which weights.

Blend files come in the original run's formats; ``blend_files/`` beside this module holds the originals,
used by default (``pretrain``: ``training_weights.csv``, ``extension``: the folder itself, ``anneal``:
``annealing_mix.txt``). The form of a blend file decides how it is read:

- a ``.csv`` file: one entry per row, the ``prefix`` column weighted by the ``new_ratio`` column printed with 9
  decimals, as the original run passed it to Megatron (``--data-path``; the phase-1 ``.dsc`` confirms it);
- a folder holding ``training_weights.csv``, ``training_weights_short.csv`` and
  ``training_weights_long.csv`` (phase 2, context extension): each subset of phase 1 (the web subsets
  split by year count as one subset each) keeps its phase-1 weight, shared between its part of documents
  of <= 4,096 tokens and its part of longer documents in proportion to their token counts, the long part
  counted 10 times; as the original printed them for Megatron, the entries come by increasing weight, each
  weight printed with 9 decimals, those printing as zero left out;
- any other file: whitespace-separated ``WEIGHT PATH`` pairs (``annealing_mix.txt``, Megatron's
  ``--data-path`` form). A relative path is a prefix as is; an absolute path (the original cluster's)
  keeps its last two components, its dataset folder and name, like the CSV prefixes.

Every prefix is relative to the user's data root: ``DATA_ROOT/lucie_tokens_65k_grouped/PeS2o_text_document``
must hold ``.bin`` and ``.idx`` files.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lucie_nemo.errors import UserError
from lucie_nemo.phases import get_phase

BLEND_FILES = Path(__file__).parent / "blend_files"
DEFAULT_BLEND_FILES = {
    "pretrain": BLEND_FILES / "training_weights.csv",
    "extension": BLEND_FILES,
    "anneal": BLEND_FILES / "annealing_mix.txt",
}
MAIN_CSV, SHORT_CSV, LONG_CSV = "training_weights.csv", "training_weights_short.csv", "training_weights_long.csv"
LONG_DOCUMENT_WEIGHT = 10  # phase 2 weighted the tokens of documents longer than 4,096 tokens 10x
WEIGHT_SUM_TOLERANCE = 1e-6
# Web subsets split by year in phase 1 were split at 4,096 tokens as one subset each.
_YEARLY_SUBSET = re.compile(r"^(FineWebEdu|RedPajama--[a-z]{2})--(?:cc-main-)?\d{4}_text_document$")


@dataclass(frozen=True)
class Blend:
    """Dataset prefixes (paths without ``.bin``/``.idx``) and their sampling weights."""

    prefixes: list[str]
    weights: list[float]

    def __post_init__(self) -> None:
        if len(self.prefixes) != len(self.weights):
            raise UserError(f"a blend needs one weight per prefix, got {len(self.prefixes)} and {len(self.weights)}")

    def to_megatron(self) -> tuple[list[str], list[float]]:
        """The ``blend`` field of megatron's (and Megatron-Bridge's) ``GPTDatasetConfig``."""
        return list(self.prefixes), list(self.weights)


def phase_blend(phase: str, data_root: Path, blend_file: Path | None = None) -> Blend:
    """The blend of a phase (``pretrain``, ``extension``, ``anneal``) with its prefixes under ``data_root``."""
    source = DEFAULT_BLEND_FILES[get_phase(phase).blend] if blend_file is None else Path(blend_file)
    entries = read_blend_file(source)
    return Blend([str(Path(data_root) / prefix) for prefix, _ in entries], [weight for _, weight in entries])


def read_blend_file(path: Path) -> list[tuple[str, float]]:
    """(prefix relative to the data root, weight) pairs from a blend file or phase-2 folder."""
    if path.is_dir():
        return _extension_entries(path)
    if not path.is_file():
        raise UserError(f"blend file {path} does not exist: check the path")
    if path.suffix.lower() == ".csv":
        return [(row["prefix"], _printed(_weight(row["new_ratio"], path, row["prefix"])))
                for row in _read_csv(path, "new_ratio")]
    return _weight_path_pairs(path)


def original_counts(phase: str) -> dict[str, tuple[int, int]]:
    """Prefix (relative to the data root) -> (documents, tokens) of the original run's datasets of ``phase``: the
    ``total_sequences`` and ``total_tokens`` columns of its blend CSVs (none for the annealing mix)."""
    source = DEFAULT_BLEND_FILES[get_phase(phase).blend]
    tables = [SHORT_CSV, LONG_CSV] if source.is_dir() else [source.name] if source.suffix == ".csv" else []
    return {row["prefix"]: (int(row["total_sequences"]), int(row["total_tokens"]))
            for name in tables for row in _read_csv(BLEND_FILES / name, "total_sequences")}


def validate_blend(blend: Blend) -> None:
    """Refuse a blend that training would reject or silently skew; the message names the entry and the fix."""
    if not blend.prefixes:
        raise UserError("the blend is empty: give it at least one dataset prefix and weight")
    for prefix, weight in zip(blend.prefixes, blend.weights):
        if not (math.isfinite(weight) and weight > 0):
            raise UserError(f"blend weight {weight} of {prefix} is not positive: give it a positive weight or drop it")
    duplicates = [prefix for prefix, count in Counter(blend.prefixes).items() if count > 1]
    if duplicates:
        raise UserError(
            f"prefix {duplicates[0]} appears {blend.prefixes.count(duplicates[0])} times in the blend: "
            "merge its entries into one (add up their weights)"
        )
    total = math.fsum(blend.weights)
    if abs(total - 1) > WEIGHT_SUM_TOLERANCE:
        raise UserError(
            f"blend weights sum to {total:.9f}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE:g}): "
            f"divide each weight by {total:.9f}"
        )
    files = [f"{prefix}{suffix}" for prefix in blend.prefixes for suffix in (".bin", ".idx")]
    missing = [path for path in files if not Path(path).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(
            f"{len(missing)} blend dataset file(s) missing: {shown}: point --data-root at the folder holding "
            "the datasets, or make them with `lucie prepare-data ... --output-prefix PREFIX`"
        )


def _read_csv(path: Path, weight_column: str) -> list[dict[str, str]]:
    """The rows of a blend CSV, which must have a ``prefix`` and a weight column."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    columns = rows[0].keys() if rows else ()
    for column in ("prefix", weight_column):
        if column not in columns:
            raise UserError(f"blend CSV {path} has no {column!r} column: it needs 'prefix' and {weight_column!r}")
    return rows


def _weight(text: str, path: Path, prefix: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"blend file {path}: weight {text!r} of {prefix} is not a number") from None


def _printed(weight: float) -> float:
    """``weight`` as the original run's blend scripts printed it for Megatron: 9 decimals."""
    return float(f"{weight:.9f}")


def _weight_path_pairs(path: Path) -> list[tuple[str, float]]:
    """``WEIGHT PATH`` pairs; absolute paths keep their last two components (dataset folder and name)."""
    words = path.read_text().split()
    if not words or len(words) % 2:
        raise UserError(f"blend file {path} must hold WEIGHT PATH pairs separated by spaces, got {len(words)} words")
    entries = []
    for weight, name in zip(words[::2], words[1::2]):
        relative = PurePosixPath(*PurePosixPath(name).parts[-2:]) if name.startswith("/") else PurePosixPath(name)
        entries.append((str(relative), _weight(weight, path, name)))
    return entries


def _subset(prefix: str) -> str:
    """The subset a prefix belongs to in phase 2: its name, the year dropped for yearly web subsets."""
    name = PurePosixPath(prefix).name
    match = _YEARLY_SUBSET.match(name)
    return match[1] if match else name


def _extension_entries(folder: Path) -> list[tuple[str, float]]:
    """Phase 2's blend: phase-1 subset weights shared between short and long parts, long tokens counted 10x."""
    for name in (MAIN_CSV, SHORT_CSV, LONG_CSV):
        if not (folder / name).is_file():
            raise UserError(
                f"phase-2 blend folder {folder} has no {name}: it needs {MAIN_CSV}, {SHORT_CSV} and {LONG_CSV}"
            )
    subset_weights: dict[str, float] = {}
    for row in _read_csv(folder / MAIN_CSV, "new_ratio"):
        subset = _subset(row["prefix"])
        weight = _weight(row["new_ratio"], folder / MAIN_CSV, row["prefix"])
        subset_weights[subset] = subset_weights.get(subset, 0.0) + weight
    short, long = (_rows_by_subset(folder / name) for name in (SHORT_CSV, LONG_CSV))
    unknown = sorted((short.keys() | long.keys()) - subset_weights.keys())
    if unknown:
        raise UserError(f"subset {unknown[0]} of the short/long CSVs in {folder} is not in {MAIN_CSV}: add it there")
    entries = []
    for subset, weight in subset_weights.items():
        short_count, long_count = short.get(subset, ("", 0.0))[1], long.get(subset, ("", 0.0))[1]
        if short_count + long_count == 0:
            raise UserError(f"subset {subset} of {MAIN_CSV} has no tokens in {SHORT_CSV} or {LONG_CSV} in {folder}")
        short_share = short_count / (short_count + LONG_DOCUMENT_WEIGHT * long_count)
        if subset in long:
            entries.append((long[subset][0], weight * (1 - short_share)))
        if subset in short:
            entries.append((short[subset][0], weight * short_share))
    # as the original printed them for Megatron: by increasing weight, 9 decimals, those printing as 0 left out
    entries.sort(key=lambda entry: entry[1])
    return [(prefix, _printed(weight)) for prefix, weight in entries if _printed(weight) > 0]


def _rows_by_subset(path: Path) -> dict[str, tuple[str, float]]:
    """Subset -> (prefix, up-sampled token count) of a short or long CSV."""
    rows = {}
    for row in _read_csv(path, "reweighted_count"):
        subset = _subset(row["prefix"])
        if subset in rows:
            raise UserError(f"{path} lists subset {subset} twice: keep one row per subset")
        rows[subset] = (row["prefix"], _weight(row["reweighted_count"], path, row["prefix"]))
    return rows
