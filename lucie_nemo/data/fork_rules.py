"""The original run's data-order rules (OpenLLM-France/Megatron-DeepSpeed at a106b24, ``megatron/data/``).

Where the fork's sample stream differs from megatron-core 0.19's for the same blend:

- each epoch's documents are shuffled on their own (``_build_doc_idx``), not all epochs at once;
- a blend of weights ``w`` sized ``T`` gives each dataset ``ceil(T * w_i * 1.005)`` samples, ``w`` normalised by a
  Python sum, and the blend their sum (``get_datasets_weights_and_num_samples``);
- the blend index (``BlendableDataset``) is rebuilt so that, among datasets whose names differ only by their first
  4-digit number (a year), an earlier year's samples all come before a later year's, within the group's slots.

Everything else (epoch count, the 80% rule for a separate last epoch, the sample index, the shuffle index, the
greedy blend index) is megatron-core's own. The functions here are pure numpy; ``original_order`` uses them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np

SAMPLE_MARGIN = 1.005  # the fork's extra 0.5% of samples per dataset
LAST_EPOCH_SHARE = 0.80  # a last epoch needing less than this share of an epoch's samples is shuffled apart
_YEAR = re.compile(r"\d{4}")
_CHUNK = 1 << 24  # slots of the blend index handled at a time by the year curriculum


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """The weights divided by their Python (left-to-right) sum, as the fork normalises them first."""
    total = 0.0
    for weight in weights:
        total += weight
    return [weight / total for weight in weights]


def dataset_samples(weights: Sequence[float], samples: int) -> list[int]:
    """Samples each dataset of a blend of ``samples`` gets: ``ceil(samples * w * 1.005)``, ``w`` normalised."""
    return [int(math.ceil(samples * weight * SAMPLE_MARGIN)) for weight in normalized_weights(weights)]


def document_index(documents: np.ndarray, epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """The document order of ``epochs`` epochs, each epoch's documents shuffled on their own (int32)."""
    index = np.empty((epochs, len(documents)), dtype=np.int32)
    for epoch in index:
        epoch[:] = documents
        rng.shuffle(epoch)
    return index.reshape(-1)


def samples_before_last_epoch(tokens_per_epoch: int, epochs: int, samples: int, seq_length: int) -> int | None:
    """Samples of the epochs before the last when the last epoch is shuffled apart, else None (80% rule)."""
    if epochs == 1:
        return None
    before = ((epochs - 1) * tokens_per_epoch - 1) // seq_length
    per_epoch = (tokens_per_epoch - 1) // seq_length
    return before if samples - before < int(LAST_EPOCH_SHARE * per_epoch) else None


def curriculum_names(paths: Sequence[str]) -> list[str]:
    """The names the year search sees: each prefix below the blend's common folder. The original cluster's
    folder held no 4-digit number, so these give the fork's groups whether it saw basenames (phase 1's ``.dsc``)
    or full paths (from fork commit f0315d0, where phase 2's ``length-0-4096/`` holds one)."""
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    root = os.path.commonpath(paths)
    return [os.path.relpath(path, root) for path in paths]


def year_groups(names: Sequence[str]) -> list[list[int]]:
    """Groups of dataset positions whose names differ only by their first 4-digit number, each in year order
    (then name order); groups of one are left out."""
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for position, name in enumerate(names):
        match = _YEAR.search(name)
        if match:
            groups.setdefault(name.replace(match[0], "XXXX"), []).append((match[0], name, position))
    return [[position for _, _, position in sorted(group)] for group in groups.values() if len(group) > 1]


def apply_year_curriculum(dataset_index: np.ndarray, sample_index: np.ndarray, groups: list[list[int]]) -> None:
    """Re-deal each group's slots of the blend, in place: in slot order, all of the first year's samples (in
    sample order), then all of the next year's, ... The fork's swap loop gives exactly this, one slot at a time;
    here the blend is read in chunks, with each group's running slot count."""
    if not groups:
        return
    datasets = max(int(dataset_index.max()), *(position for group in groups for position in group)) + 1
    counts = np.zeros(datasets, dtype=np.int64)
    for start in range(0, len(dataset_index), _CHUNK):
        counts += np.bincount(dataset_index[start:start + _CHUNK], minlength=datasets)
    lookup = np.full(datasets, -1, dtype=np.int8)
    members, ends = [], []
    for number, group in enumerate(groups):
        lookup[group] = number
        members.append(np.asarray(group, dtype=dataset_index.dtype))
        ends.append(np.cumsum(counts[group]))
    dealt = np.zeros(len(groups), dtype=np.int64)
    for start in range(0, len(dataset_index), _CHUNK):
        chunk, samples = dataset_index[start:start + _CHUNK], sample_index[start:start + _CHUNK]
        owner = lookup[chunk]
        for number in range(len(groups)):
            slots = np.flatnonzero(owner == number)
            rank = dealt[number] + np.arange(len(slots))
            year = np.searchsorted(ends[number], rank, side="right")
            chunk[slots] = members[number][year]
            samples[slots] = rank - (ends[number] - counts[groups[number]])[year]
            dealt[number] += len(slots)
