"""Check a recipe before any GPU is spent: our layout rules, then Megatron-Bridge's own validation."""

from __future__ import annotations

import contextlib
import copy
import os

from lucie_nemo import cpu_support
from lucie_nemo.errors import UserError


def rampup_batch_sizes(cfg) -> list[int]:
    """Every global batch size the run will use (each rampup stage, then the final one)."""
    rampup = cfg.train.rampup_batch_size
    final = cfg.train.global_batch_size
    if not rampup:
        return [final]
    start, increment, _ = rampup
    return list(range(start, final, increment)) + [final]


def check_layout(cfg, world_size: int, batch_sizes: list[int] | None = None) -> None:
    """Divisibility rules of the parallel layout, each failure naming the field and the fix.
    ``batch_sizes``: the global batches the run will use (default: every rampup stage and the final
    one; a plan's leg that starts after the rampup passes its own)."""
    model = cfg.model
    tp, pp, cp = model.tensor_model_parallel_size, model.pipeline_model_parallel_size, model.context_parallel_size
    if world_size % (tp * pp * cp):
        raise UserError(
            f"world size {world_size} is not divisible by TP x PP x CP = {tp} x {pp} x {cp}: "
            "change the node count or model.tensor/pipeline/context_parallel_size"
        )
    dp = world_size // (tp * pp * cp)
    micro = cfg.train.micro_batch_size
    for batch in batch_sizes or rampup_batch_sizes(cfg):
        if batch % (micro * dp):
            raise UserError(
                f"train.global_batch_size: batch {batch} is not divisible by train.micro_batch_size x DP = "
                f"{micro} x {dp} = {micro * dp}; choose a global batch (and rampup start/increment) that are "
                f"multiples of {micro * dp}, or change the micro batch or node count"
            )
    if model.vocab_size % tp:
        raise UserError(f"model.vocab_size {model.vocab_size} is not divisible by TP {tp}: change TP")
    for field in ("num_attention_heads", "num_query_groups"):
        if getattr(model, field) % tp:
            raise UserError(f"model.{field} {getattr(model, field)} is not divisible by TP {tp}: change TP")
    if model.num_layers % pp:
        raise UserError(f"model.num_layers {model.num_layers} is not divisible by PP {pp}: change PP")
    if cp > 1 and model.seq_length % (2 * cp):
        raise UserError(
            f"model.seq_length {model.seq_length} is not divisible by 2 x CP = {2 * cp} "
            "(context parallelism splits each sequence in 2 x CP chunks): change CP"
        )


@contextlib.contextmanager
def _world_size(world_size: int):
    previous = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(world_size)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = previous


def validate_config(cfg, world_size: int, *, batch_sizes: list[int] | None = None):
    """Our layout checks, then Megatron-Bridge's runtime finalisation and validation on a copy
    (as it would run on ``world_size`` GPUs). Returns the validated copy.

    The checkpoint the phase starts from need not exist yet (a chained submission validates all
    phases up front): checkpoint_load.require_initial_checkpoint checks it where it must."""
    from megatron.bridge.training.config import runtime_config_update

    check_layout(cfg, world_size, batch_sizes)
    candidate = copy.deepcopy(cfg)
    if not cpu_support.transformer_engine_installed():
        # Fusions that only exist in Transformer Engine fail Megatron's checks here; they are
        # validated on the GPU side. Everything else is checked as on the cluster.
        candidate.model.apply_rope_fusion = False
    candidate.checkpoint.pretrained_checkpoint = None
    with _world_size(world_size):
        try:
            runtime_config_update(candidate)
        except (AssertionError, ValueError) as error:
            raise UserError(f"Megatron-Bridge rejected the config: {error}") from None
    return candidate


