"""The recipe of one leg of a phase with overrides applied: what `lucie train`, `lucie launch` and the import
of a universal checkpoint build."""

from __future__ import annotations

from collections.abc import Sequence


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
    from lucie_nemo.phases import trained_phase
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
