"""Continue the original run: `lucie import` of a universal checkpoint (Adam state included), then `lucie train`
runs step N+1 with the scheduled LR and batch, and its update is a reference AdamW step on the same batch."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lucie_nemo.architecture import TINY, LucieShape
from lucie_nemo.demo import scalars
from lucie_nemo.demo_scale import demo_phase
from lucie_nemo.phases import PRETRAIN
from lucie_nemo.schedule import PhaseSchedule
from test_export import read_global
from test_import_universal import original_hf_weights
from universal_fixture import write_universal

ITERATION = 3  # of the scaled-down phase 1 (lucie train --tiny): step 4 has 6 samples, an LR in the cosine decay
SHAPE = LucieShape(**{**asdict(TINY), "vocab_size": 65_024})
PHASE = demo_phase(PRETRAIN)
# The CPU run trains in fp32 (weights, gradients, Adam): its update and the reference's agree to float rounding.
# Measured: at most 4.5e-6 of the largest update of each tensor; a fresh Adam state is off by 1.0.
TOLERANCE = 1e-4

# `lucie train` with its batches recorded: Megatron-Bridge's get_batch, wrapped (the test's only instrument).
# Under torchrun each rank records into the path argv[1] formats with its rank; a pipeline stage records
# None for the tensors it is not given (the first stage: no labels, the last: no tokens).
RECORDING_TRAIN = """
import os, sys, torch
from lucie_nemo import runtime
runtime.prepare()
import megatron.bridge.training.gpt_step as gpt_step
record, batches, original = sys.argv[1].format(rank=os.environ.get("RANK", "0")), [], gpt_step.get_batch
def get_batch(*args, **kwargs):
    batch = original(*args, **kwargs)
    fields = {"tokens": batch[0], "labels": batch[1], "loss_mask": batch[2], "position_ids": batch[4]}
    batches.append({name: None if tensor is None else tensor.clone() for name, tensor in fields.items()})
    torch.save(batches, record)
    return batch
gpt_step.get_batch = get_batch
sys.argv = ["lucie", *sys.argv[2:]]
from lucie_nemo.cli import main
main()
"""


def _lucie(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "lucie_nemo.cli", *args], capture_output=True, text=True,
                            timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _train(root: Path, iterations: int, *options: str) -> list[dict[str, torch.Tensor]]:
    record = root / "batches.pt"
    command = [sys.executable, "-c", RECORDING_TRAIN, str(record), "train", "pretrain", "--tiny", "--vocab-size",
               str(SHAPE.vocab_size), "--output-root", str(root), *options, f"train.train_iters={iterations}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(record)


def _run_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights a run saved (megatron-core's stacked names), spelled out as Hugging Face tensors."""
    names = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"] + [
        f"decoder.layers.{name}" for name in ("self_attention.linear_qkv.layer_norm_weight", "self_attention.linear_qkv.weight",
                                              "self_attention.linear_proj.weight", "mlp.linear_fc1.layer_norm_weight",
                                              "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")]
    megatron = read_global(checkpoint, names)
    d, groups = SHAPE.head_dim, SHAPE.num_query_groups
    per_group = SHAPE.num_attention_heads // groups
    out = {"model.embed_tokens.weight": megatron["embedding.word_embeddings.weight"],
           "model.norm.weight": megatron["decoder.final_layernorm.weight"], "lm_head.weight": megatron["output_layer.weight"]}
    for i in range(SHAPE.num_layers):
        layer = lambda name: megatron[f"decoder.layers.{name}"][i]  # noqa: E731
        qkv = layer("self_attention.linear_qkv.weight").view(groups, per_group + 2, d, -1)  # per group: q heads, k, v
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(-1, SHAPE.hidden_size)
        out[p + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(-1, SHAPE.hidden_size)
        out[p + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(-1, SHAPE.hidden_size)
        out[p + "self_attn.o_proj.weight"] = layer("self_attention.linear_proj.weight")
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = layer("mlp.linear_fc1.weight").chunk(2)
        out[p + "mlp.down_proj.weight"] = layer("mlp.linear_fc2.weight")
        out[p + "input_layernorm.weight"] = layer("self_attention.linear_qkv.layer_norm_weight")
        out[p + "post_attention_layernorm.weight"] = layer("mlp.linear_fc1.layer_norm_weight")
    return out


def reference_update(universal: Path, batches: list[dict[str, torch.Tensor]], lr: float) -> dict[str, torch.Tensor]:
    """One torch.optim.AdamW step of transformers' LlamaForCausalLM holding the universal checkpoint's fp32
    weights, exp_avg, exp_avg_sq and step (read through the original converter's mapping), on the gradient
    of ``batches`` (Megatron's loss: the mean over micro-batches of each one's masked token mean), clipped to
    a global norm of 1.0 as Megatron clips: the new weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=SHAPE.vocab_size, hidden_size=SHAPE.hidden_size, intermediate_size=SHAPE.ffn_hidden_size,
                         num_hidden_layers=SHAPE.num_layers, num_attention_heads=SHAPE.num_attention_heads,
                         num_key_value_heads=SHAPE.num_query_groups, head_dim=SHAPE.head_dim, hidden_act="silu",
                         max_position_embeddings=PHASE.seq_length, rms_norm_eps=1e-5, rope_theta=PHASE.rotary_base,
                         tie_word_embeddings=False, attention_bias=False, mlp_bias=False, torch_dtype=torch.float32)
    model = LlamaForCausalLM(config).float()
    model.config._attn_implementation = "eager"
    weights = original_hf_weights(universal, "fp32", dtype=torch.float32)
    model.load_state_dict(weights, strict=True)
    for batch in batches:
        logits = model(input_ids=batch["tokens"], position_ids=batch["position_ids"]).logits.float()
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
        mask = batch["loss_mask"].flatten().float()
        ((losses * mask).sum() / mask.sum() / len(batches)).backward()
    parameters = dict(model.named_parameters())
    torch.nn.utils.clip_grad_norm_(parameters.values(), PHASE.optimizer.clip_grad)
    decayed = [p for p in parameters.values() if p.dim() > 1]  # megatron-core: no weight decay on 1-D tensors
    groups = [{"params": decayed, "weight_decay": PHASE.optimizer.weight_decay},
              {"params": [p for p in parameters.values() if p.dim() == 1], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(PHASE.optimizer.adam_beta1, PHASE.optimizer.adam_beta2),
                                  eps=PHASE.optimizer.adam_eps)
    averages, squares = (original_hf_weights(universal, state, dtype=torch.float32) for state in ("exp_avg", "exp_avg_sq"))
    for name, parameter in parameters.items():
        optimizer.state[parameter] = {"step": torch.tensor(float(ITERATION)), "exp_avg": averages[name].clone(),
                                      "exp_avg_sq": squares[name].clone()}
    optimizer.step()
    return {name: parameter.detach().clone() for name, parameter in parameters.items()}


def largest_relative_difference(universal: Path, run: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|Δrun - Δref| / max|Δref|, Δ the change from the universal checkpoint's weights."""
    start = original_hf_weights(universal, "fp32", dtype=torch.float32)
    worst = 0.0
    for name, before in start.items():
        expected = reference[name] - before
        worst = max(worst, ((run[name] - before) - expected).abs().max().item() / expected.abs().max().item())
    return worst


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A universal checkpoint at iteration 3 of the scaled-down phase 1, imported, then trained one step."""
    root = tmp_path_factory.mktemp("continue")
    universal = write_universal(root / "global_step3", SHAPE, ITERATION, phase=PHASE)
    imported = _lucie("import", str(universal), str(root / "runs" / "pretrain" / "checkpoints"), "--tiny")
    batches = _train(root / "runs", ITERATION + 1)
    return universal, root / "runs" / "pretrain", batches, imported.stdout


def test_import_writes_the_run_at_its_iteration(resumed):
    universal, run, _, output = resumed
    assert f"phase pretrain iteration {ITERATION}" in output and "Adam step 3" in output
    first = run / "checkpoints" / f"iter_{ITERATION:07d}"
    state = torch.load(first / "train_state.pt", weights_only=False)
    assert (state["step"], state["consumed_train_samples"]) == (ITERATION, PhaseSchedule(PHASE).consumed_samples(ITERATION))
    names = ["optimizer.state.param.decoder.layers.self_attention.linear_qkv.weight",
             "optimizer.state.exp_avg_sq.decoder.layers.mlp.linear_fc1.weight", "output_layer.weight"]
    saved = read_global(first, names)
    expected = {state: original_hf_weights(universal, state, dtype=torch.float32) for state in ("fp32", "exp_avg_sq")}
    layer = "model.layers.1."
    qkv = saved[names[0]][1].view(SHAPE.num_query_groups, -1, SHAPE.head_dim, SHAPE.hidden_size)
    assert torch.equal(qkv[:, -2].reshape(-1, SHAPE.hidden_size), expected["fp32"][layer + "self_attn.k_proj.weight"])
    assert torch.equal(saved[names[1]][1].chunk(2)[1], expected["exp_avg_sq"][layer + "mlp.up_proj.weight"])
    assert saved["output_layer.weight"].dtype == torch.bfloat16
    assert torch.equal(saved["output_layer.weight"], expected["fp32"]["lm_head.weight"].bfloat16())


def test_train_continues_at_n_plus_1_with_the_reference_adamw_update(resumed):
    universal, run, batches, _ = resumed
    schedule = PhaseSchedule(PHASE)
    rates, sizes = scalars(run / "tensorboard", "learning-rate"), scalars(run / "tensorboard", "batch-size")
    assert sorted(rates) == [ITERATION + 1]  # no step 1 again: the run continued
    assert sizes[ITERATION + 1] == schedule.global_batch_size(ITERATION + 1) == len(batches) == 6
    assert rates[ITERATION + 1] == pytest.approx(schedule.lr(ITERATION + 1), rel=1e-6)
    after = _run_weights(run / "checkpoints" / f"iter_{ITERATION + 1:07d}")
    reference = reference_update(universal, batches, schedule.lr(ITERATION + 1))
    difference = largest_relative_difference(universal, after, reference)
    print(f"largest relative difference {difference:.3e}")
    assert difference < TOLERANCE


def test_a_fresh_optimizer_start_fails_the_comparison(resumed, tmp_path):
    universal, _, _, _ = resumed
    _lucie("import", str(universal), str(tmp_path / "weights"), "--weights-only", "--tiny")
    batches = _train(tmp_path / "runs", 1, "--initial-checkpoint", str(tmp_path / "weights"))
    after = _run_weights(tmp_path / "runs" / "pretrain" / "checkpoints" / "iter_0000001")
    reference = reference_update(universal, batches, PhaseSchedule(PHASE).lr(ITERATION + 1))
    difference = largest_relative_difference(universal, after, reference)
    print(f"fresh start: largest relative difference {difference:.3e}")
    assert difference > 100 * TOLERANCE
