"""Train one phase with Megatron-Bridge: the entry point nemo-run launches (and `lucie train`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from lucie_nemo import runtime


def build_phase_config(
    phase: str,
    *,
    overrides: Sequence[str] = (),
    tiny: bool = False,
    vocab_size: int | None = None,
    **recipe_options,
):
    """The phase recipe with ``key=value`` overrides applied (Megatron-Bridge's Hydra syntax).

    ``tiny`` trains the scaled-down phases (lucie_nemo.demo_scale) on a tiny Lucie-shaped model.
    """
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    from lucie_nemo.errors import UserError
    from lucie_nemo.recipe import phase_recipe

    selected = trained_phase(phase, tiny)
    if tiny:
        from lucie_nemo.model import TINY, lucie_tiny

        recipe_options.setdefault("model", lucie_tiny(selected, vocab_size or TINY.vocab_size))
    cfg = phase_recipe(selected, **recipe_options)
    if overrides:
        try:
            process_config_with_overrides(cfg, cli_overrides=list(overrides))
        except Exception as error:  # Hydra/OmegaConf raise many types; the message says what is wrong
            raise UserError(f"cannot apply overrides {list(overrides)}: {error}") from None
    return cfg


def trained_phase(phase: str, tiny: bool = False):
    """The facts of ``phase`` as trained: Lucie's, or scaled down by lucie_nemo.demo_scale with ``tiny``."""
    from lucie_nemo.phases import get_phase

    selected = get_phase(phase)
    if tiny:
        from lucie_nemo.demo_scale import demo_phase

        selected = demo_phase(selected)
    return selected


def train_phase(phase: str, **options) -> None:
    """Build, validate and train ``phase`` in this process group (torchrun or a single process)."""
    runtime.prepare()
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    import torch

    from lucie_nemo import cpu_support
    from lucie_nemo.model import use_local_layers
    from lucie_nemo.validation import check_layout

    cfg = build_phase_config(phase, **options)
    if not torch.cuda.is_available():
        cpu_support.adapt_config_for_cpu(cfg)  # here only: a launch from a CPU login node keeps the GPU config
    elif not cpu_support.transformer_engine_installed():
        use_local_layers(cfg.model, dtype=torch.bfloat16)  # a GPU environment without Transformer Engine
    check_layout(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    _single_process_defaults()
    if os.environ["RANK"] == "0":
        _record_plan(cfg, trained_phase(phase, options.get("tiny", False)))
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


def _single_process_defaults() -> None:
    """Outside torchrun/srun, behave as rank 0 of a world of one."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from lucie_nemo.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())
