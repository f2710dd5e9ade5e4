"""Train one phase with Megatron-Bridge: the entry point nemo-run launches (and `lucie train`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from lucie_nemo import runtime


def build_phase_config(phase: str, **options):
    """The phase recipe with ``key=value`` overrides applied (see build_leg_config)."""
    return build_leg_config(phase, **options)[0]


def build_leg_config(
    phase: str,
    *,
    overrides: Sequence[str] = (),
    tiny: bool = False,
    vocab_size: int | None = None,
    layout: str = "fast",
    leg: str | None = None,
    phase_overrides: dict | None = None,
    **recipe_options,
):
    """The recipe of ``phase`` in ``layout`` (lucie_nemo.plan.layout_legs; ``leg`` names the leg when
    there are two) with ``key=value`` overrides applied (Megatron-Bridge's Hydra syntax), and the global
    batches that leg's steps use.

    ``tiny`` trains the scaled-down phases (lucie_nemo.demo_scale) on a tiny Lucie-shaped model, in the
    demo's own layout (TP1 PP1) or the ``TPxPPxCP`` one given (micro-batch 1). ``phase_overrides`` change the
    phase's data facts (Phase.overridden: seq_length, seed, train_samples, data_order).
    """
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    from lucie_nemo.errors import UserError
    from lucie_nemo.plan import (LayoutChoice, batch_sizes_from, layout_legs, names_a_split, original_recompute,
                                 parse_split, select_leg)
    from lucie_nemo.recipe import leg_recipe, phase_recipe

    selected = trained_phase(phase, tiny, phase_overrides)
    if tiny:
        from lucie_nemo.model import TINY, lucie_tiny

        recipe_options.setdefault("model", lucie_tiny(selected, vocab_size or TINY.vocab_size))
        if names_a_split(layout):
            recipe_options["layout"] = LayoutChoice(*parse_split(layout), micro_batch_size=1,
                                                    recompute=original_recompute(selected.seq_length, 1))
        cfg, batch_sizes = phase_recipe(selected, **recipe_options), batch_sizes_from(selected, 1)
    else:
        original = selected.original_layout
        nodes = recipe_options.get("nodes") or original.nodes
        gpus_per_node = recipe_options.get("gpus_per_node") or original.gpus_per_node
        legs = layout_legs(selected, layout, nodes, gpus_per_node, recipe_options.get("precision", "bf16"))
        cfg, batch_sizes = leg_recipe(selected, select_leg(legs, leg), **recipe_options)
    if overrides:
        try:
            process_config_with_overrides(cfg, cli_overrides=list(overrides))
        except Exception as error:  # Hydra/OmegaConf raise many types; the message says what is wrong
            raise UserError(f"cannot apply overrides {list(overrides)}: {error}") from None
    return cfg, batch_sizes


def trained_phase(phase: str, tiny: bool = False, overrides: dict | None = None):
    """The facts of ``phase`` as trained: Lucie's, or scaled down by lucie_nemo.demo_scale with ``tiny``, with
    ``overrides`` (Phase.overridden) applied."""
    from lucie_nemo.phases import get_phase

    selected = get_phase(phase)
    if tiny:
        from lucie_nemo.demo_scale import demo_phase

        selected = demo_phase(selected)
    return selected.overridden(**(overrides or {}))


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
