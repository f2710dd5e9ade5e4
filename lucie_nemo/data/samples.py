"""What a range of global samples, or a step's global batch, holds: read through the dataset objects that
`lucie train` builds (same config, same Megatron-Bridge provider), for `lucie data samples`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from lucie_nemo.errors import UserError
from lucie_nemo.schedule import PhaseSchedule


@dataclass(frozen=True)
class SampleWindow:
    """One global sample: where it comes from and its ``seq_length + 1`` tokens."""

    sample: int  # global sample number (0-based), the blend's index
    step: int  # the step whose global batch holds it (1-based)
    prefix: str  # the dataset prefix it was read from
    documents: tuple[int, ...]  # document ids in that dataset, in window order
    offset: int  # offset of the window's first token in the first document
    tokens: np.ndarray

    def to_json(self) -> dict:
        return {"sample": self.sample, "step": self.step, "prefix": self.prefix, "documents": list(self.documents),
                "offset": self.offset}


def parse_range(text: str) -> range:
    """``A:B`` (global samples A to B-1) as a range."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise UserError(f"--range {text!r} is not A:B with whole numbers, e.g. 0:16") from None
    if not 0 <= start < stop:
        raise UserError(f"--range {text!r} needs 0 <= A < B")
    return range(start, stop)


def step_samples(schedule: PhaseSchedule, step: int) -> range:
    """The global samples of ``step``'s global batch."""
    if step < 1:
        raise UserError("steps are counted from 1: give --step 1 or more")
    return range(schedule.consumed_samples(step - 1), schedule.consumed_samples(step))


def train_dataset(cfg):
    """The train dataset Megatron-Bridge builds from ``cfg`` (a `lucie train` config), built here, one process."""
    from megatron.bridge.data.base import DatasetBuildContext
    from megatron.bridge.data.loaders import get_train_valid_test_num_samples
    from megatron.bridge.data.utils import pretrain_train_valid_test_datasets_provider
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from lucie_nemo.data.order_config import OriginalOrderDatasetConfig

    import logging
    import warnings

    logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)  # a line per index file otherwise
    warnings.filterwarnings("ignore", message=".*build_tokenizer.* is deprecated")  # Bridge's own, as setup uses
    dataset = cfg.dataset
    if getattr(dataset, "mock", False):
        raise UserError("this run reads mock data: give --data-root (and --blend-file) as to `lucie train`")
    dataset.finalize()
    tokenizer = build_tokenizer(cfg.tokenizer)
    counts = list(get_train_valid_test_num_samples(cfg))
    if isinstance(dataset, OriginalOrderDatasetConfig):
        return dataset.build_datasets(DatasetBuildContext(*counts, tokenizer=tokenizer))[0]
    dataset.tokenizer = tokenizer
    return pretrain_train_valid_test_datasets_provider(counts, dataset)[0]


def read_windows(dataset, samples: range, schedule: PhaseSchedule) -> list[SampleWindow]:
    """The windows of ``samples`` in the (blended) train ``dataset``."""
    if samples.stop > len(dataset):
        raise UserError(f"the blend has {len(dataset):,} samples: ask for samples below that")
    return [_window(dataset, sample, schedule.step_for_consumed(sample + 1)) for sample in samples]


def _window(dataset, sample: int, step: int) -> SampleWindow:
    source, index = dataset, sample
    if hasattr(dataset, "dataset_index"):
        source = dataset.datasets[int(dataset.dataset_index[sample])]
        index = int(dataset.dataset_sample_index[sample])
    item = source[index]
    shuffled = int(source.shuffle_index[index])
    (first, offset), (last, _) = source.sample_index[shuffled], source.sample_index[shuffled + 1]
    documents = tuple(int(document) for document in source.document_index[first:last + 1])
    tokens = np.append(item["tokens"].numpy(), item["labels"][-1:].numpy())
    return SampleWindow(sample, step, str(PurePath(source.dataset_path)), documents, int(offset), tokens)
