"""A one-process torch.distributed + Megatron model-parallel world, for tools and tests."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def single_process_world(seed: int = 42) -> Iterator[None]:
    """gloo, world size 1, TP = PP = 1, Megatron's RNG tracker seeded; torn down on exit."""
    from megatron.core import parallel_state, tensor_parallel

    owns_group = not torch.distributed.is_initialized()
    if owns_group:  # a tcp:// address, not MASTER_* variables that child processes would inherit
        address = f"tcp://127.0.0.1:{free_port()}"
        torch.distributed.init_process_group("gloo", init_method=address, rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not torch.cuda.is_available())
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()
        if owns_group:
            torch.distributed.destroy_process_group()


def attach_process_groups(provider) -> None:
    """Give a model provider the current Megatron process groups (needed by ``provide()``)."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
