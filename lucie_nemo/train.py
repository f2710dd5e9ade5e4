"""Train one phase with Megatron-Bridge: the entry point nemo-run launches (and `lucie train`)."""

from __future__ import annotations

import os

from lucie_nemo import runtime
from lucie_nemo.leg_config import build_leg_config
from lucie_nemo.phases import trained_phase


def build_phase_config(phase: str, **options):
    """The phase recipe with ``key=value`` overrides applied (see build_leg_config)."""
    return build_leg_config(phase, **options)[0]


def train_phase(phase: str, **options) -> None:
    """Build, validate and train ``phase`` in this process group (torchrun or a single process)."""
    runtime.prepare()
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    import torch

    from lucie_nemo import cpu_support
    from lucie_nemo.checkpoint_load import (require_initial_checkpoint, resumes_distributed_optimizer_state,
                                            use_checked_loads)
    from lucie_nemo.graceful_stop import start_checkpoint_writer_queue_ignoring_sigterm
    from lucie_nemo.model import use_local_layers
    from lucie_nemo.plan import names_a_split
    from lucie_nemo.validation import check_layout

    cfg, batch_sizes = build_leg_config(phase, **options)
    if not torch.cuda.is_available():  # here only: a launch from a CPU login node keeps the GPU config
        use_local_layers(cfg.model, dtype=torch.float32)
        # the recipe's distributed optimizer where the layout matters (several ranks, or a layout asked
        # for: a leg's checkpoint to load in another) and to resume its checkpoints; the demo's one-rank
        # runs keep their numerics
        distributed = (_world_size() > 1 or names_a_split(options.get("layout", "fast"))
                       or resumes_distributed_optimizer_state(cfg.checkpoint))
        cpu_support.adapt_config_for_cpu(cfg, distributed_optimizer=distributed)
    elif not cpu_support.transformer_engine_installed():
        use_local_layers(cfg.model, dtype=torch.bfloat16)  # a GPU environment without Transformer Engine
    use_checked_loads(cfg)  # a failed load ends the run with an error, never with status 0
    require_initial_checkpoint(cfg.checkpoint, phase)
    check_layout(cfg, _world_size(), batch_sizes)
    _single_process_defaults()
    if os.environ["RANK"] == "0":
        _record_plan(cfg, trained_phase(phase, options.get("tiny", False), options.get("phase_overrides")))
    if cfg.train.exit_signal_handler:
        start_checkpoint_writer_queue_ignoring_sigterm()
    pretrain(cfg, forward_step)


def _record_plan(cfg, phase) -> None:
    """Write the run's plan.json for `lucie report` (lucie_nemo/report/plan.py says why)."""
    from pathlib import Path

    import torch

    from lucie_nemo.architecture import LucieShape
    from lucie_nemo.report.plan import write_run_plan

    model = cfg.model
    shape = LucieShape(model.num_layers, model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
                       model.num_query_groups, model.vocab_size)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    write_run_plan(Path(cfg.checkpoint.save).parent, phase, cfg.train.train_iters, int(os.environ["WORLD_SIZE"]),
                   shape, device)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _single_process_defaults() -> None:
    """Outside torchrun/srun, behave as rank 0 of a world of one."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from lucie_nemo.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())
