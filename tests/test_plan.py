"""`lucie plan`: its JSON, the 128 x 4 recommendation, recipe validation of every recommended plan,
and the memory estimate against what megatron-core allocates and Megatron's own activation formula."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from conftest import distributed_model_and_optimizer
from typer.testing import CliRunner

from lucie_nemo.architecture import LUCIE_7B, TINY, LucieShape
from lucie_nemo.memory_estimate import GIB, Split, StateBytes, estimate_memory, model_state_bytes, stage_parameters
from lucie_nemo.phases import ANNEAL, EXTENSION, PHASES, PRETRAIN
from lucie_nemo.plan import make_plan

LEG_KEYS = {"from_step", "to_step", "tensor_parallel", "pipeline_parallel", "context_parallel", "data_parallel",
            "micro_batch_size", "memory_gib", "recompute"}
RATE_KEYS = {"tokens_per_second_per_gpu", "mfu"}


def plan_cli(*args: str):
    from lucie_nemo.cli import plan as plan_module

    app = typer.Typer()
    plan_module.register(app)
    app.command("version")(lambda: None)
    return CliRunner().invoke(app, ["plan", *args])


def test_json_has_the_documented_keys():
    result = plan_cli("pretrain", "--nodes", "128", "--gpus-per-node", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"phase", "nodes", "gpus_per_node", "legs", "layouts", "original"}
    assert (data["phase"], data["nodes"], data["gpus_per_node"]) == ("pretrain", 128, 4)
    assert all(set(leg) == LEG_KEYS | RATE_KEYS | {"leg"} for leg in data["legs"])
    assert all(set(row) == LEG_KEYS | RATE_KEYS | {"valid_for_steps", "fits"} for row in data["layouts"])
    assert set(data["original"]) == LEG_KEYS | RATE_KEYS


def test_128_nodes_of_4_gpus_two_legs_with_less_model_parallelism_after_the_rampup():
    plan = make_plan(PRETRAIN, 128, 4).to_json()
    rampup, main = plan["legs"]
    assert (rampup["leg"], rampup["from_step"], rampup["to_step"]) == ("rampup", 1, 19_336)
    assert (main["leg"], main["from_step"], main["to_step"]) == ("main", 19_337, 753_851)
    # During the rampup, DP x mbs divides 64 (every batch 256, 320, ..., 960); after it, 1,024 only.
    assert 64 % (rampup["data_parallel"] * rampup["micro_batch_size"]) == 0
    assert 1_024 % (main["data_parallel"] * main["micro_batch_size"]) == 0
    assert main["tensor_parallel"] * main["pipeline_parallel"] * main["context_parallel"] < 16
    assert all(leg["memory_gib"] * GIB < 80e9 for leg in plan["legs"])
    assert main["tokens_per_second_per_gpu"] > plan["original"]["tokens_per_second_per_gpu"]
    original = plan["original"]
    assert (original["tensor_parallel"], original["pipeline_parallel"], original["data_parallel"],
            original["micro_batch_size"]) == (4, 4, 32, 2)
    # Every layout is listed with the steps it can run; those that can run the rampup run them all.
    spans = {tuple(row["valid_for_steps"]) for row in plan["layouts"]}
    assert spans == {(1, 753_851), (19_337, 753_851)}


def test_text_output_shows_legs_memory_split_original_and_assumptions():
    result = plan_cli("pretrain", "--nodes", "128", "--gpus-per-node", "4")
    assert result.exit_code == 0, result.output
    for text in ("rampup leg, steps 1-19,336", "main leg, steps 19,337-753,851", "weights", "gradients",
                 "optimizer shard", "activations", "Original layout: TP4 PP4 CP1 DP32 mbs 2",
                 "Estimate assumptions:", "pipeline bubble"):
        assert text in result.stdout, text


def test_long_context_phase_is_one_leg_with_context_parallel_considered():
    plan = make_plan(EXTENSION, 32, 4)
    assert [leg.name for leg in plan.legs] == ["all"]
    assert {c.choice.context_parallel for c in plan.layouts} == {1, 2, 4, 8}
    assert plan.legs[0].candidate.memory.total_gib <= plan.hardware.usable_gib


@pytest.mark.parametrize(("args", "message"), [
    (["pretrain", "--nodes", "0"], "--nodes and --gpus-per-node must be at least 1"),
    (["pretrain", "--nodes", "1", "--gpus-per-node", "1"], "no layout of phase 'pretrain' fits 1 x 1 GPUs"),
    (["phase9", "--nodes", "1"], "unknown phase 'phase9'"),
    (["pretrain", "--nodes", "1", "--precision", "fp4"], "precision 'fp4' is not one of bf16, fp8"),
])
def test_bad_input_is_one_clear_error(args, message):
    result = plan_cli(*args)
    assert result.exit_code == 2
    assert message in result.output


ALLOCATIONS = [("pretrain", 128, 4), ("pretrain", 64, 8), ("pretrain", 32, 4), ("extension", 32, 4),
               ("anneal", 16, 8), ("extension", 4, 4)]


@pytest.mark.parametrize(("phase", "nodes", "gpus"), ALLOCATIONS)
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_every_recommended_leg_passes_the_recipe_validation(megatron_runtime, phase, nodes, gpus, precision):
    from lucie_nemo.recipe import leg_recipe
    from lucie_nemo.validation import validate_config

    plan = make_plan(PHASES[phase], nodes, gpus, precision)
    for leg in plan.legs:
        cfg, batch_sizes = leg_recipe(PHASES[phase], leg, nodes=nodes, gpus_per_node=gpus, precision=precision)
        validated = validate_config(cfg, nodes * gpus, batch_sizes=batch_sizes)
        model = validated.model
        choice = leg.candidate.choice
        assert (model.tensor_model_parallel_size, model.pipeline_model_parallel_size, model.context_parallel_size,
                validated.train.micro_batch_size, validated.data_parallel_size) == (
            choice.tensor_parallel, choice.pipeline_parallel, choice.context_parallel, choice.micro_batch_size,
            leg.candidate.data_parallel)
        assert (model.recompute_granularity or "none") == choice.recompute


# --- the memory estimate against megatron-core -------------------------------------------------


def test_parameter_count_is_lucie_7b():
    assert stage_parameters(LUCIE_7B, Split(), 0) == 6_706_958_336
    # Stages of TP4 PP4 add up to the model (norms replicated over TP, matrices split).
    split = Split(tensor_parallel=4, pipeline_parallel=4)
    per_stage = [stage_parameters(LUCIE_7B, split, stage) for stage in range(4)]
    norms = (2 * LUCIE_7B.num_layers + 1) * LUCIE_7B.hidden_size
    assert sum(per_stage) * 4 - 3 * norms == 6_706_958_336


def _allocated_model_state(shape: LucieShape, initialise_moments: bool) -> dict[str, int]:
    """Bytes megatron-core allocates for a bf16 model wrapped in DDP (fp32 gradient buffer) with the
    distributed optimizer, in this one-process world."""
    import torch

    from lucie_nemo.model import build_provider, use_local_layers

    provider = use_local_layers(build_provider(shape, PRETRAIN), dtype=torch.bfloat16)
    model, optimizer = distributed_model_and_optimizer(provider, lr=1e-4, bf16=True)
    buffers = [buffer for chunk in model for buffer in chunk.buffers]
    weights = sum(p.numel() * p.element_size() for chunk in model for p in chunk.parameters())
    optimizers = getattr(optimizer, "chained_optimizers", [optimizer])
    main = [p for opt in optimizers for group in opt.optimizer.param_groups for p in group["params"]]
    if initialise_moments:
        for opt in optimizers:
            opt.init_state_fn(opt.optimizer, opt.config)
        moments = sum(t.numel() * t.element_size() for opt in optimizers for state in opt.optimizer.state.values()
                      for t in state.values())
    else:  # Adam's state is zeros_like each main parameter: counted, not allocated (memory of this machine)
        moments = 2 * sum(p.numel() * p.element_size() for p in main)
    return {
        "weights": weights,
        "gradients_unpadded": sum(b.numel_unpadded for b in buffers) * 4,
        "gradients": sum(b.grad_data.numel() * b.grad_data.element_size() for b in buffers),
        "param_buffer": sum(b.param_data.numel() * b.param_data.element_size() for b in buffers),
        "optimizer": sum(p.numel() * p.element_size() for p in main) + moments,
    }


FULL_WIDTH_ONE_LAYER = replace(LUCIE_7B, num_layers=1, vocab_size=TINY.vocab_size)


@pytest.mark.parametrize(("shape", "initialise_moments"), [(TINY, True), (FULL_WIDTH_ONE_LAYER, False)],
                         ids=["tiny", "full_width_layer"])
def test_model_state_bytes_equal_megatron_core_allocations(world, shape, initialise_moments):
    allocated = _allocated_model_state(shape, initialise_moments)
    weights, gradients, optimizer = model_state_bytes(stage_parameters(shape, Split(), 0), Split(), StateBytes())
    assert allocated["weights"] == weights
    assert allocated["gradients_unpadded"] == gradients
    assert allocated["optimizer"] == optimizer
    # The buffers pad each parameter's start to 64 elements; the padding stays under 0.1% here.
    assert gradients <= allocated["gradients"] <= gradients * 1.001 + 4 * 64 * 64
    assert allocated["param_buffer"] == allocated["gradients"] // 2  # bf16 weights live in DDP's buffer


def test_optimizer_shard_follows_data_and_context_parallel():
    params = stage_parameters(LUCIE_7B, Split(), 0)
    _, _, whole = model_state_bytes(params, Split())
    _, _, shard = model_state_bytes(params, Split(data_parallel=64, context_parallel=2))
    assert whole == 12 * params and shard == -(-params // 128) * 12
    assert model_state_bytes(params, Split(), StateBytes.for_dtype(4))[2] == 8 * params  # fp32 weights: no master copy


def test_activation_estimate_against_megatron_theoretical_memory(megatron_runtime):
    """Megatron's report (Korthikanti et al. Table 2, via Megatron-Bridge) counts 18 + 4 f/h bytes per
    token and hidden unit per layer for a non-gated MLP with selective recompute; ours counts Lucie's
    SwiGLU and GQA with flash attention: 31 h. Same method, within 5% on Lucie-7B, per layer and for
    the first stage of TP4 PP4 with 4 micro-batches in flight."""
    from megatron.bridge.training.utils.theoretical_memory_utils import compute_activation_memory

    from lucie_nemo.recipe import phase_recipe

    for tp, pp in ((1, 1), (4, 4)):
        cfg = phase_recipe(PRETRAIN, nodes=128)
        cfg.model.tensor_model_parallel_size, cfg.model.pipeline_model_parallel_size = tp, pp
        cfg.train.micro_batch_size = 1
        megatron = compute_activation_memory(cfg, num_microbatches=64)
        ours = estimate_memory(LUCIE_7B, Split(tp, pp, 1, 512 // (tp * pp)), seq_length=4_096, micro_batch_size=1,
                               microbatches=64)
        layers_only = ours.activations
        if pp == 1:  # Megatron adds the output layer's input and fp32 logits at PP 1; compare the layers
            layers_only -= 2 * 4_096 * LUCIE_7B.vocab_size + 4 * 4_096 * LUCIE_7B.hidden_size
            megatron -= 4_096 * LUCIE_7B.hidden_size * 4 * (1 + LUCIE_7B.vocab_size / LUCIE_7B.hidden_size)
        assert layers_only == pytest.approx(megatron, rel=0.05), (tp, pp)


def test_memory_estimate_recompute_and_pipeline_in_flight():
    split = Split(1, 4, 1, 128)
    kwargs = dict(seq_length=4_096, micro_batch_size=1)
    few = estimate_memory(LUCIE_7B, split, microbatches=2, **kwargs)
    many = estimate_memory(LUCIE_7B, split, microbatches=8, **kwargs)
    assert few.stage == many.stage == 0
    assert many.activations == pytest.approx(2 * few.activations, rel=1e-9)  # min(PP, m) micro-batches in flight
    full = estimate_memory(LUCIE_7B, split, microbatches=8, recompute="full", **kwargs)
    assert full.activations < many.activations / 5
    fp8 = estimate_memory(LUCIE_7B, split, microbatches=8, precision="fp8", **kwargs)
    assert fp8.fp8_weight_cache > 0 and fp8.activations < many.activations


def test_anneal_has_no_rampup_leg():
    plan = make_plan(ANNEAL, 32, 4)
    assert [(leg.from_step, leg.to_step) for leg in plan.legs] == [(1, 1_220)]


def test_layout_option_resolves_to_legs(megatron_runtime):
    from lucie_nemo.errors import UserError
    from lucie_nemo.plan import layout_legs
    from lucie_nemo.leg_config import build_leg_config

    assert [leg.name for leg in layout_legs(PRETRAIN, "fast", 128, 4)] == ["rampup", "main"]
    [original] = layout_legs(PRETRAIN, "original", 128, 4)
    assert (original.candidate.choice.tensor_parallel, original.candidate.choice.pipeline_parallel) == (4, 4)
    [explicit] = layout_legs(PRETRAIN, "TP2xPP4xCP1", 128, 4)
    assert (explicit.from_step, explicit.to_step, explicit.candidate.data_parallel) == (1, 753_851, 64)
    with pytest.raises(UserError, match="--layout TP1xPP1xCP1: it cannot run the batch rampup's batches"):
        layout_legs(PRETRAIN, "TP1xPP1xCP1", 128, 4)
    with pytest.raises(UserError, match="--layout 'TP1PP1' is not one of fast, original, or TPxPPxCP"):
        layout_legs(PRETRAIN, "TP1PP1", 128, 4)
    with pytest.raises(UserError, match="no --leg: this layout runs the phase in the legs rampup, main"):
        build_leg_config("pretrain", nodes=128, gpus_per_node=4)
    rampup, rampup_batches = build_leg_config("pretrain", nodes=128, gpus_per_node=4, leg="rampup")
    main, main_batches = build_leg_config("pretrain", nodes=128, gpus_per_node=4, leg="main")
    assert (rampup.train.exit_interval, main.train.exit_interval) == (19_336, None)
    assert rampup_batches == list(range(256, 1_024, 64)) + [1_024] and main_batches == [1_024]
    # Both legs keep the whole phase: same iterations, rampup, data and checkpoint folder (one run, resharded).
    assert rampup.train.train_iters == main.train.train_iters == 753_851
    assert rampup.train.rampup_batch_size == main.train.rampup_batch_size == [256, 64, 10_000_000]
    assert rampup.checkpoint.save == main.checkpoint.load and main.checkpoint.dist_ckpt_optim_fully_reshardable
    assert (main.model.tensor_model_parallel_size, main.train.micro_batch_size) == (1, 2)


def test_the_default_bf16_rate_is_the_one_measured_on_a_gpu():
    """lucie plan's bf16 compute rate: the fast main leg's layers measured by bench/gpu_check.sh on an H200."""
    from lucie_nemo.throughput_estimate import Hardware

    log = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu_check-h200-2026-12-04-run1.log"
    stage = log.read_text().split("layers: fast main leg (TP1 PP1 mbs 2, 4 layers), bf16 (estimate")[1]
    measured = float(re.search(r"([\d.]+) model TFLOP/s", stage)[1])
    assert Hardware().tflops["bf16"] == measured == 354.7
