"""`lucie model`: facts about the Lucie-7B model (parameters, layout, HF config)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors

model_app = typer.Typer(help="Facts about the Lucie-7B model.", no_args_is_help=True)


def layout_facts(phase_name: str) -> dict:
    """The original parallel layout of a phase and what it implies per GPU."""
    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.phases import get_phase

    phase = get_phase(phase_name)
    layout = phase.original_layout
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    return {
        "phase": phase.name,
        "nodes": layout.nodes,
        "gpus_per_node": layout.gpus_per_node,
        "world_size": layout.world_size,
        "tensor_parallel": tp,
        "pipeline_parallel": pp,
        "data_parallel": layout.data_parallel,
        "layers_per_pipeline_stage": LUCIE_7B.num_layers // pp,
        "attention_heads_per_tp_rank": LUCIE_7B.num_attention_heads // tp,
        "kv_heads_per_tp_rank": LUCIE_7B.num_query_groups // tp,
        "vocab_rows_per_tp_rank": LUCIE_7B.vocab_size // tp,
        "seq_length": phase.seq_length,
        "rotary_base": phase.rotary_base,
    }


@model_app.command("info")
def info(
    phase: Annotated[str, typer.Option(help="pretrain, extension or anneal")] = "pretrain",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Parameter count (measured on a meta-device instance) and parallel layout."""
    # Megatron logs to stdout while it loads; keep stdout for the answer.
    with user_errors(), contextlib.redirect_stdout(sys.stderr):
        from lucie_nemo import runtime

        runtime.prepare()
        from lucie_nemo.model import LUCIE_7B, lucie_7b
        from lucie_nemo.model_info import count_parameters
        from lucie_nemo.phases import get_phase

        report = count_parameters(lucie_7b(get_phase(phase)))
        facts = {
            "parameters": report.parameters,
            "components": report.components,
            "parameters_per_layer": report.per_layer,
            "architecture": {
                "num_layers": LUCIE_7B.num_layers,
                "hidden_size": LUCIE_7B.hidden_size,
                "ffn_hidden_size": LUCIE_7B.ffn_hidden_size,
                "num_attention_heads": LUCIE_7B.num_attention_heads,
                "num_query_groups": LUCIE_7B.num_query_groups,
                "vocab_size": LUCIE_7B.vocab_size,
            },
            "layout": layout_facts(phase),
        }
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    print(f"Lucie-7B: {report.parameters:,} parameters")
    for name, count in report.components.items():
        print(f"  {name:<14}{count:>16,}")
    print(f"  per layer     {report.per_layer:>16,}")
    print("Original layout:")
    for key, value in facts["layout"].items():
        print(f"  {key:<28}{value}")


@model_app.command("hf-config")
def hf_config_command(
    phase: Annotated[str, typer.Option(help="pretrain, extension or anneal")],
    step: Annotated[Optional[int], typer.Option(help="Step within the phase (default: its last)")] = None,
) -> None:
    """Print the config.json that an export of PHASE at STEP writes."""
    with user_errors():
        from lucie_nemo.hf_config import hf_config

        print(json.dumps(hf_config(phase, step), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
