"""The original run's sample order (lucie_nemo.data.original_order) against the fork's own data code.

The expected windows and blend indices were made by running OpenLLM-France/Megatron-DeepSpeed's
``megatron/data`` code (a106b24) on the same synthetic datasets: tests/fixtures/original_order/README.md."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path, PurePath

import numpy as np
import pytest
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

from lucie_nemo.data import fork_rules
from lucie_nemo.data.blends import phase_blend
from lucie_nemo.data.original_order import build_original_order
from lucie_nemo.phases import PRETRAIN
from tests.original_order_data import (BLEND_CASES, BLEND_SAMPLES, SEED, SEQ_LENGTH, SINGLE_CASES, VOCAB,
                                       single_case_samples, write_datasets)

FIXTURES = Path(__file__).parent / "fixtures" / "original_order"


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory) -> dict[str, str]:
    return write_datasets(tmp_path_factory.mktemp("original-order"))


def gpt_config(blend, cache: Path) -> GPTDatasetConfig:
    return GPTDatasetConfig(random_seed=SEED, sequence_length=SEQ_LENGTH, blend=blend, split="100,0,0",
                            tokenizer=NullTokenizer(VOCAB), reset_position_ids=False, reset_attention_mask=False,
                            eod_mask_loss=False, path_to_cache=str(cache))


def windows(dataset, count: int) -> np.ndarray:
    """The ``seq_length + 1`` tokens of each of the first ``count`` samples."""
    return np.stack([np.append(item["tokens"], item["labels"][-1:]) for item in map(dataset.__getitem__,
                                                                                    range(count))])


def solo_tokens(prefixes) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefixes["Solo"])  # held: its arrays are views of its memory map
    return int(dataset.sequence_lengths.sum())


@pytest.mark.parametrize("case", list(SINGLE_CASES))
def test_one_dataset_gives_the_forks_windows(case, prefixes, tmp_path) -> None:
    samples = single_case_samples(solo_tokens(prefixes), case)
    dataset = build_original_order(gpt_config(([prefixes["Solo"]], None), tmp_path), [samples, 0, 0])[0]
    expected = np.load(FIXTURES / f"{case}.npz")["windows"]
    assert expected.shape == (samples, SEQ_LENGTH + 1)
    assert np.array_equal(windows(dataset, samples), expected)


def test_megatron_cores_own_order_differs_from_the_forks_past_one_epoch(prefixes, tmp_path) -> None:
    """The case the per-epoch shuffle exists for: megatron-core shuffles all epochs at once."""
    samples = single_case_samples(solo_tokens(prefixes), "four_epochs")
    config = gpt_config(([prefixes["Solo"]], None), tmp_path)
    dataset = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()[0]
    expected = np.load(FIXTURES / "four_epochs.npz")["windows"]
    same = (windows(dataset, samples) == expected).all(axis=1)
    assert (samples, int(same.sum())) == (3_304, 0)


@pytest.mark.parametrize("case", list(BLEND_CASES))
def test_a_blend_gives_the_forks_indices_and_windows(case, prefixes, tmp_path) -> None:
    names, weights = zip(*BLEND_CASES[case])
    blend = build_original_order(gpt_config(([prefixes[name] for name in names], list(weights)), tmp_path),
                                 [BLEND_SAMPLES, 0, 0])[0]
    expected = np.load(FIXTURES / f"{case}.npz")
    assert len(blend) == len(expected["dataset_index"])
    assert np.array_equal(blend.dataset_index, expected["dataset_index"])
    assert np.array_equal(blend.dataset_sample_index, expected["dataset_sample_index"])
    assert np.array_equal(windows(blend, len(blend)), expected["windows"])


def test_the_year_curriculum_read_in_chunks_deals_the_same_slots(prefixes, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fork_rules, "_CHUNK", 7)  # the groups' slots cross many chunk boundaries
    names, weights = zip(*BLEND_CASES["years"])
    blend = build_original_order(gpt_config(([prefixes[name] for name in names], list(weights)), tmp_path),
                                 [BLEND_SAMPLES, 0, 0])[0]
    expected = np.load(FIXTURES / "years.npz")
    assert np.array_equal(blend.dataset_index, expected["dataset_index"])
    assert np.array_equal(blend.dataset_sample_index, expected["dataset_sample_index"])


def test_the_blend_index_is_cached_under_its_own_key(prefixes, tmp_path) -> None:
    names, weights = zip(*BLEND_CASES["years"])
    config = gpt_config(([prefixes[name] for name in names], list(weights)), tmp_path)
    built = build_original_order(config, [BLEND_SAMPLES, 0, 0])[0]
    cached = sorted(path.name.split("-", 1)[1] for path in tmp_path.glob("*-OriginalOrderBlendedDataset-*"))
    assert cached == ["OriginalOrderBlendedDataset-train-dataset_index.npy",
                      "OriginalOrderBlendedDataset-train-dataset_sample_index.npy",
                      "OriginalOrderBlendedDataset-train-description.txt"]
    loaded = build_original_order(config, [BLEND_SAMPLES, 0, 0])[0]
    assert isinstance(loaded.dataset_index, np.memmap)
    assert np.array_equal(loaded.dataset_index, built.dataset_index)


def test_phase1_blend_sizes_are_the_published_dsc() -> None:
    """Lucie-Training's chronicles/pretrain/1_pretraining/7165e9faca31a46ed2eb11eee239c46d.dsc: the fork's
    description of phase 1's blend (its md5 is its name)."""
    path = FIXTURES / "7165e9faca31a46ed2eb11eee239c46d.dsc"
    dsc = path.read_text()
    assert hashlib.md5(dsc.encode()).hexdigest() == path.stem
    published = re.findall(r"Data prefix (\S+)\nDataset name train\nNumber of samples (\d+)\n", dsc)
    blend = phase_blend("pretrain", Path("/data"))
    counts = fork_rules.dataset_samples(blend.weights, PRETRAIN.train_samples)
    assert [PurePath(prefix).name for prefix in blend.prefixes] == [name for name, _ in published]
    assert counts == [int(samples) for _, samples in published]
    assert sum(counts) == int(re.search(r"\nSize: (\d+)", dsc)[1]) == 765_955_378
    weights = np.array(fork_rules.normalized_weights(blend.weights))
    assert f"Weights: {weights / np.sum(weights)}\n" in dsc
    # megatron-core's own sizing of the same blend: sum(ceil(T * w))
    megatron = np.array(blend.weights) / np.sum(blend.weights)
    assert sum(math.ceil(PRETRAIN.train_samples * weight) for weight in megatron) == 762_144_653


def test_year_groups_of_the_three_phases_whatever_the_data_root() -> None:
    """Phase 1: the FineWebEdu and RedPajama fr/de/es/it years (62% of its slots); phase 2: none (the fork saw
    full paths then, and `length-0-4096` holds the first 4-digit number); the annealing mix: none."""
    def groups(phase: str) -> list[list[str]]:
        prefixes = phase_blend(phase, Path("/scratch/2024/lucie")).prefixes
        names = fork_rules.curriculum_names(prefixes)
        return [[PurePath(prefixes[i]).name.removesuffix("_text_document") for i in group]
                for group in fork_rules.year_groups(names)]

    pretrain = groups("pretrain")
    assert pretrain[0] == [f"FineWebEdu--cc-main-{year}" for year in range(2019, 2025)]
    assert pretrain[1] == [f"RedPajama--fr--{year}" for year in range(2014, 2024)]
    assert [group[0].rsplit("--", 1)[0] for group in pretrain[2:]] == ["RedPajama--de", "RedPajama--es",
                                                                      "RedPajama--it"]
    assert groups("extension") == [] and groups("anneal") == []


def test_phase1_blend_index_with_its_year_curriculum_is_the_forks() -> None:
    """Phase 1's 140 weights and prefix names over 100,000 slots: the fork's blending helper and swap-loop
    curriculum (fixtures/original_order/phase1_blend.npz) against the vectorised one."""
    from megatron.core.datasets.utils import normalize

    from lucie_nemo.data.original_order import blend_indices

    expected = np.load(FIXTURES / "phase1_blend.npz")
    blend = phase_blend("pretrain", Path("/data"))
    names = fork_rules.curriculum_names(blend.prefixes)
    weights = normalize(fork_rules.normalized_weights(blend.weights))  # as OriginalOrderBlendedDataset gets them
    dataset_index, sample_index = blend_indices(weights, 100_000, names)
    assert np.array_equal(dataset_index, expected["dataset_index"])
    assert np.array_equal(sample_index, expected["dataset_sample_index"])
    web = [i for i, prefix in enumerate(blend.prefixes) if "FineWebEdu" in prefix]
    first_2020 = np.flatnonzero(np.isin(dataset_index, [i for i in web if "2020" in blend.prefixes[i]]))[0]
    assert all("2019" in blend.prefixes[i] for i in dataset_index[:first_2020] if i in web)
