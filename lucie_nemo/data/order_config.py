"""Megatron-Bridge's dataset config for a blend read in the original run's order (lucie_nemo.data.original_order).

Bridge builds a ``GPTDatasetConfig`` with megatron-core's own order; a ``DatasetProvider`` is its hook for another
builder. This one holds the ``GPTDatasetConfig`` (blend, sequence length, seed, split, cache folder) and the
original run's ``--train-samples``, which sizes the blend as the fork did (Bridge's own count is train_iters x the
final global batch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron.bridge.data.base import DatasetBuildContext, DatasetProvider
from megatron.bridge.training.config import GPTDatasetConfig

_DATALOADER_FIELDS = ("dataloader_type", "num_workers", "data_sharding", "pin_memory", "drop_last",
                      "persistent_workers")


@dataclass
class OriginalOrderDatasetConfig(DatasetProvider):
    """A GPT blend in the original run's sample order, sized by the original run's ``train_samples``."""

    gpt: GPTDatasetConfig | None = None
    train_samples: int = 0
    skip_getting_attention_mask_from_dataset: bool = field(default=True)

    @classmethod
    def wrapping(cls, gpt: GPTDatasetConfig, train_samples: int) -> "OriginalOrderDatasetConfig":
        """``gpt`` read in the original order, with ``gpt``'s data-loader settings."""
        return cls(gpt=gpt, train_samples=train_samples,
                   **{name: getattr(gpt, name) for name in _DATALOADER_FIELDS})

    @property
    def seq_length(self) -> int:
        return self.gpt.seq_length

    def finalize(self) -> None:
        self.gpt.finalize()
        super().finalize()

    def build_datasets(self, context: DatasetBuildContext) -> tuple:
        """The train, valid and test datasets: the blend sized by ``train_samples``."""
        from lucie_nemo.data.original_order import build_original_order

        self.gpt.tokenizer = context.tokenizer
        return tuple(build_original_order(self.gpt, [self.train_samples, context.valid_samples,
                                                      context.test_samples]))
