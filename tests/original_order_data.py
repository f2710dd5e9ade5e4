"""Small synthetic indexed datasets for the original-order tests, and their cases (fixtures made by
tests/fixtures/original_order/make_fixtures.py with the fork's own data code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEQ_LENGTH = 32
SEED = 42
VOCAB = 5_000
# name -> (documents, longest document); lengths drawn from one RandomState in this order
DATASETS = {"Solo": (300, 200), "Alpha": (200, 150), "Beta": (120, 90), "Gamma": (80, 300),
            "Web--2021": (90, 120), "Web--2019": (110, 100), "Web--2020": (70, 160), "Code": (60, 220),
            "News--fr--2018": (50, 80), "News--fr--2017": (40, 140)}
# single-dataset cases: name -> number of samples as a multiple of one epoch's samples
SINGLE_CASES = {"one_epoch": 0.5, "two_epochs_separate": 1.1, "two_epochs_together": 1.95, "four_epochs": 3.5}
BLEND_CASES = {
    "blend3": (("Alpha", 0.5), ("Beta", 0.3), ("Gamma", 0.2)),
    "years": (("Web--2021", 0.3), ("Code", 0.2), ("Web--2019", 0.15), ("News--fr--2018", 0.12),
              ("Web--2020", 0.13), ("News--fr--2017", 0.1)),
}
BLEND_SAMPLES = 2_000


def write_datasets(folder: Path) -> dict[str, str]:
    """Write every dataset of DATASETS under ``folder``; name -> prefix."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.RandomState(7)
    prefixes = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, (documents, longest) in DATASETS.items():
        prefix = str(folder / name)
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
        for length in rng.randint(1, longest + 1, size=documents):
            builder.add_document(rng.randint(0, VOCAB, size=length).astype(np.uint16), [int(length)])
        builder.finalize(f"{prefix}.idx")
        prefixes[name] = prefix
    return prefixes


def single_case_samples(tokens_per_epoch: int, case: str) -> int:
    """Samples asked of the one dataset in ``case``."""
    return int(SINGLE_CASES[case] * ((tokens_per_epoch - 1) // SEQ_LENGTH))
