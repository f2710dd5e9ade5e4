"""Shared test fixtures: the Megatron runtime, the shared reference folder, a one-process world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Tests that read the real Lucie files (tokenizer, blends) say so when the folder is absent.
needs_shared = pytest.mark.skipif(not (SHARED / "lucie").is_dir(),
                                  reason=f"needs {SHARED / 'lucie'} (the real Lucie tokenizer and blend files)")
# The GPU path (tests/test_gpu.py): Transformer Engine layers, bf16 and FP8, checkpoints, `lucie train` in FP8.
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_TESTS = "test_gpu.py"


def distributed_model_and_optimizer(provider, *, lr: float, bf16: bool):
    """``provider``'s model in DDP (fp32 gradient buffer) with megatron-core's DistributedOptimizer (torch's
    Adam here: no Transformer Engine, no Apex), in the current process world."""
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from lucie_nemo.distributed import attach_process_groups

    attach_process_groups(provider)
    provider.finalize()
    ddp = DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True)
    model = provider.provide_distributed_model(ddp_config=ddp, use_cpu_initialization=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=lr, bf16=bf16, use_distributed_optimizer=True), model)
    return model, optimizer


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
    from fake_hub import DatasetHub, miniature_lucie_branches, miniature_lucie_dataset
    from lucie_nemo.data.sources import DATASET

    with DatasetHub() as running:
        running.add_dataset(DATASET, miniature_lucie_dataset(), miniature_lucie_branches())
        monkeypatch.setenv("LUCIE_CACHE", str(tmp_path / "cache"))
        yield running


def pytest_report_header(config):
    if not torch.cuda.is_available():
        return f"no CUDA device: the GPU-only tests (tests/{GPU_TESTS}) are skipped"
    return f"CUDA device: {torch.cuda.get_device_name(0)}: the GPU-only tests (tests/{GPU_TESTS}) run"


def pytest_report_collectionfinish(config, start_path, items):
    count = sum(item.path.name == GPU_TESTS for item in items)
    if count:
        state = "run on this CUDA device" if torch.cuda.is_available() else "skipped: no CUDA device here"
        return f"{count} GPU-only tests ({GPU_TESTS}): {state}"
    return None
