"""The original run's sample stream as megatron-core datasets (the rules: ``lucie_nemo.data.fork_rules``).

``OriginalOrderBuilder(OriginalOrderGPTDataset, sizes, is_built_on_rank, config).build()`` is megatron-core's
``BlendedMegatronDatasetBuilder`` with the fork's per-dataset sample counts, its per-epoch document shuffle and
its year curriculum. The class names enter megatron-core's index-cache key, so these indices never mix with
megatron-core's own in a cache folder.
"""

from __future__ import annotations

import os

import numpy
from megatron.core.datasets import helpers
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, _build_shuffle_index
from megatron.core.datasets.utils import Split

from lucie_nemo.data import fork_rules
from lucie_nemo.errors import UserError

_GPT_INDICES = ("description.txt", "document_index.npy", "sample_index.npy", "shuffle_index.npy")
_BLEND_INDICES = ("description.txt", "dataset_index.npy", "dataset_sample_index.npy")


def _cache_files(folder: str | None, dataset, names: tuple[str, ...]) -> list[str] | None:
    """megatron-core's cache file names of ``dataset`` in ``folder`` (None: no cache)."""
    if folder is None:
        return None
    split = getattr(dataset, "index_split", None) or dataset.split
    base = f"{dataset.unique_description_hash}-{type(dataset).__name__}-{split.name}"
    return [os.path.join(folder, f"{base}-{name}") for name in names]


def _load_or_build(files: list[str] | None, description: str, build) -> tuple[numpy.ndarray, ...]:
    """The arrays cached in ``files`` (memory-mapped), else ``build()``'s, saved there when there is a cache:
    each file written whole then renamed, the description (``files[0]``) last."""
    if files and all(os.path.isfile(path) for path in files):
        return tuple(numpy.load(path, mmap_mode="r") for path in files[1:])
    arrays = build()
    if files:
        os.makedirs(os.path.dirname(files[0]), exist_ok=True)
        for path, array in zip(files[1:], arrays):
            with open(f"{path}.tmp", "wb") as writer:
                numpy.save(writer, array)
            os.replace(f"{path}.tmp", path)
        with open(f"{files[0]}.tmp", "w") as writer:
            writer.write(description)
        os.replace(f"{files[0]}.tmp", files[0])
    return arrays


def _refuse_lazy_caches(config) -> None:
    if config.defer_npy_index_mmap or config.fast_cache_load:
        raise UserError("the original data order builds its own indices: turn off defer_npy_index_mmap and "
                        "fast_cache_load, or train with data_order 'megatron'")


class OriginalOrderGPTDataset(GPTDataset):
    """megatron-core's GPTDataset with the fork's document index: each epoch's documents shuffled on their own."""

    def _build_document_sample_shuffle_indices(self) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        _refuse_lazy_caches(self.config)
        folder = self.config.path_to_cache or os.path.join(self.dataset.path_prefix, "cache",
                                                           f"{type(self).__name__}_indices")
        return _load_or_build(_cache_files(folder, self, _GPT_INDICES), self.unique_description, self._indices)

    def _indices(self) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        seq_length = self.config.sequence_length
        tokens = self._get_num_tokens_per_epoch()
        epochs = self._get_num_epochs(tokens)
        rng = numpy.random.RandomState(self.config.random_seed)
        documents = fork_rules.document_index(self.indices, epochs, rng)
        samples = helpers.build_sample_idx(self.dataset.sequence_lengths, documents, seq_length, epochs, tokens)
        total = samples.shape[0] - 1
        first = fork_rules.samples_before_last_epoch(tokens, epochs, self.num_samples, seq_length)
        return documents, samples, _build_shuffle_index(total if first is None else first, total, rng)


class OriginalOrderBlendedDataset(BlendedDataset):
    """megatron-core's BlendedDataset whose index gets the fork's year curriculum once built (datasets grouped by
    their prefix below the blend's common folder, ``fork_rules.curriculum_names``)."""

    def _build_indices(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        _refuse_lazy_caches(self.config)
        files = _cache_files(self.config.path_to_cache, self, _BLEND_INDICES)
        return _load_or_build(files, self.unique_description, self._indices)

    def _indices(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        names = fork_rules.curriculum_names([dataset.dataset_path for dataset in self.datasets])
        return blend_indices(self.weights, self.size, names)


def blend_indices(weights: list[float], size: int, names: list[str]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The blend's dataset index and dataset sample index: megatron-core's greedy blend of ``weights`` (normalised)
    over ``size`` slots, then the year curriculum among the datasets ``names``."""
    dataset_index = numpy.zeros(size, dtype=numpy.int16)
    sample_index = numpy.zeros(size, dtype=numpy.int64)
    helpers.build_blending_indices(dataset_index, sample_index, weights, len(weights), size, False)
    fork_rules.apply_year_curriculum(dataset_index, sample_index, fork_rules.year_groups(names))
    return dataset_index, sample_index


class OriginalOrderBuilder(BlendedMegatronDatasetBuilder):
    """megatron-core's builder sizing a weighted blend as the fork did: ``ceil(size * w * 1.005)`` samples per
    dataset, the blend their sum. One prefix without a weight is the fork's single dataset of ``size`` samples."""

    def _build_blended_dataset_splits(self):
        config = self.config
        if config.mock or config.blend is None:
            raise UserError("the original data order needs a blend of dataset prefixes (blend), not mock data "
                            "or blend_per_split")
        prefixes, weights = config.blend
        split = config.split_matrix
        if weights is None:
            if len(prefixes) > 1:
                raise UserError(f"a blend of {len(prefixes)} prefixes needs one weight per prefix")
            return self._build_megatron_dataset_splits(prefixes[0], split, self.sizes)
        sizes = [fork_rules.dataset_samples(weights, size or 0) for size in self.sizes]
        per_dataset = [list(counts) for counts in zip(*sizes)]
        datasets = self._build_megatron_datasets_parallel(prefixes, split, per_dataset)
        blends = [None] * len(Split)
        for i in range(len(Split)):
            if split[i] is not None:
                blends[i] = self.build_generic_dataset(
                    OriginalOrderBlendedDataset, self.is_built_on_rank, True, datasets[i],
                    fork_rules.normalized_weights(weights), sum(sizes[i]), config)
        return blends


def build_original_order(config, sizes: list[int]) -> list:
    """The train, valid and test datasets (or None) of megatron-core GPT ``config`` in the original order."""
    return OriginalOrderBuilder(OriginalOrderGPTDataset, sizes, lambda: True, config).build()
