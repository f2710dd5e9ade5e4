"""Shared test fixtures: the Megatron runtime, the shared reference folder, a one-process world."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Tests that read the real Lucie files (tokenizer, blends) say so when the folder is absent.
needs_shared = pytest.mark.skipif(not (SHARED / "lucie").is_dir(),
                                  reason=f"needs {SHARED / 'lucie'} (the real Lucie tokenizer and blend files)")


@pytest.fixture(scope="session")
def megatron_runtime():
    """Megatron-Bridge made importable and runnable here (CPU redirects when CUDA is absent)."""
    from lucie_nemo import runtime

    runtime.prepare()


@pytest.fixture
def world(megatron_runtime):
    """gloo, world size 1, Megatron model-parallel state initialised."""
    from lucie_nemo.distributed import single_process_world

    with single_process_world():
        yield


@pytest.fixture()
def dataset_hub(monkeypatch, tmp_path):
    """A local fake Hub serving the miniature Lucie training dataset; the data-source cache in ``tmp_path``."""
    from fake_hub import DatasetHub, miniature_lucie_dataset
    from lucie_nemo.data.sources import DATASET

    with DatasetHub() as running:
        running.add_dataset(DATASET, miniature_lucie_dataset())
        monkeypatch.setenv("LUCIE_CACHE", str(tmp_path / "cache"))
        yield running


def pytest_report_header(config):
    import torch

    gpu_check = "the suite has no GPU-only tests: bench/gpu_check.sh checks the GPU path on a GPU machine"
    if not torch.cuda.is_available():
        return f"no CUDA device; {gpu_check}"
    return f"CUDA device: {torch.cuda.get_device_name(0)}; {gpu_check}"
