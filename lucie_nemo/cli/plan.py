"""`lucie plan`: the valid parallel layouts of a phase on an allocation, estimated, best first."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors


def _layout_line(row: dict) -> str:
    return (f"TP{row['tensor_parallel']} PP{row['pipeline_parallel']} CP{row['context_parallel']} "
            f"DP{row['data_parallel']} mbs {row['micro_batch_size']}, recompute {row['recompute']}: "
            f"{row['memory_gib']:.1f} GiB, {row['tokens_per_second_per_gpu']:,} tokens/s/GPU "
            f"(MFU {row['mfu']:.0%})")


def render(plan) -> str:
    """The plan as text: legs, memory split, the original layout, the other layouts, assumptions."""
    from lucie_nemo.memory_estimate import GIB
    from lucie_nemo.throughput_estimate import ASSUMPTIONS

    data = plan.to_json()
    hw = plan.hardware
    lines = [f"lucie plan {plan.phase.name}: {plan.nodes} nodes x {plan.gpus_per_node} GPUs ({hw.name}, "
             f"{plan.precision}); a layout fits under {hw.usable_gib:.1f} GiB "
             f"({hw.usable_fraction:.0%} of {hw.memory_gib:g} GiB)", "", "Recommended:"]
    for leg, row in zip(plan.legs, data["legs"]):
        lines.append(f"  {leg.name} leg, steps {row['from_step']:,}-{row['to_step']:,}: {_layout_line(row)}")
        m = leg.candidate.memory
        lines.append(f"    memory (pipeline stage {m.stage}): weights {m.weights / GIB:.2f} + gradients "
                     f"{m.gradients / GIB:.2f} + optimizer shard {m.optimizer / GIB:.2f} + activations "
                     f"{m.activations / GIB:.2f}" + (f" + FP8 weight cache {m.fp8_weight_cache / GIB:.2f}"
                                                     if m.fp8_weight_cache else "") + " GiB")
    if len(plan.legs) > 1:
        lines.append(f"  (the rampup's batches must split over DP x mbs: {plan.legs[1].candidate.choice.name()} "
                     f"can only run after step {plan.legs[0].to_step:,})")
    original = data["original"]
    lines += ["", "Original layout: " + (_layout_line(original) if original else
                                         "not possible on this GPU count")]
    lines += ["", f"All {len(data['layouts'])} valid layouts (steps they can run; '!' = over the memory limit):"]
    for row in data["layouts"]:
        mark = " " if row["fits"] else "!"
        lines.append(f" {mark} steps {row['valid_for_steps'][0]:,}-{row['valid_for_steps'][1]:,}: {_layout_line(row)}")
    lines += ["", "Estimate assumptions:"] + [f"  - {text}" for text in ASSUMPTIONS]
    lines.append("  - memory: see lucie_nemo/memory_estimate.py (Korthikanti et al. 2022, redone for Lucie's layer)")
    return "\n".join(lines)


def plan(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal")],
    nodes: Annotated[int, typer.Option(help="Nodes of the allocation")],
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node")] = 4,
    precision: Annotated[str, typer.Option(help="bf16 or fp8")] = "bf16",
    tflops: Annotated[Optional[float], typer.Option(help="Measured compute per GPU (TFLOP/s), e.g. from bench/gpu_check.sh")] = None,
    network: Annotated[Optional[float], typer.Option(help="Inter-node bandwidth per GPU, GB/s (default 50)")] = None,
    gpu_memory: Annotated[Optional[float], typer.Option(help="GPU memory, GiB (default 79.6, H100 80GB)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Every valid layout of PHASE on NODES x GPUS, with memory and throughput estimates; best plan first."""
    with user_errors():
        from dataclasses import replace

        from lucie_nemo.phases import get_phase
        from lucie_nemo.plan import make_plan
        from lucie_nemo.throughput_estimate import Hardware

        hardware = Hardware()
        if tflops is not None:
            hardware = replace(hardware, tflops={**hardware.tflops, precision: tflops})
        if network is not None:
            hardware = replace(hardware, network_gbytes_per_s=network)
        if gpu_memory is not None:
            hardware = replace(hardware, memory_gib=gpu_memory)
        result = make_plan(get_phase(phase), nodes, gpus_per_node, precision, hardware)
        print(json.dumps(result.to_json()) if as_json else render(result))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
