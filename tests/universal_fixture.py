"""Write a DeepSpeed universal checkpoint of a Lucie-shaped model, in the exact format of the released optimizer
states (not produced by DeepSpeed itself: the format is taken from the fork's code).

- ``mp_rank_00_model_states.pt``: what DeepSpeed's engine saves for a pipeline model (``module`` None, its
  counters, ``lr_scheduler`` = Megatron's ``OptimizerParamScheduler.state_dict()``) plus Megatron-DeepSpeed's
  client state (``args`` Namespace, ``checkpoint_version`` 3.0, ``iteration``, ``tokens``,
  ``universal_checkpoint_info``, ``rng_state`` with numpy's generator state);
- ``zero/optimizer_state.pt``: the bf16 optimizer's non-sharded state with FusedAdam's ``param_groups``;
- ``zero/<name>/{fp32,exp_avg,exp_avg_sq}.pt``: ``{"param": tensor, "cat_dim": ..., ...}`` as
  ``ds_to_universal.merge_tp_slices`` saves them (vocabulary tensors padded storage cut by a view).

Tensors are drawn one parameter at a time (fp32 values that bf16 must round), so the bench can build full-width
layers. Run as a script: ``python tests/universal_fixture.py OUT [--layers N] [--full-width] [--iteration N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lucie_nemo.architecture import LUCIE_7B, LucieShape  # noqa: E402
from lucie_nemo.phases import PRETRAIN, Phase  # noqa: E402
from lucie_nemo.schedule import PhaseSchedule  # noqa: E402

ROW_PARALLEL = ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight")


def megatron_args(shape: LucieShape, phase: Phase, consumed_samples: int, consumed_tokens: int) -> argparse.Namespace:
    """The fields of Megatron-DeepSpeed's args that a Lucie phase-1 run had (1_pretraining.slurm)."""
    rampup = phase.rampup
    return argparse.Namespace(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_query_groups,
        kv_channels=shape.head_dim, padded_vocab_size=shape.vocab_size, make_vocab_size_divisible_by=128,
        seq_length=phase.seq_length, max_position_embeddings=phase.seq_length, rope_theta=phase.rotary_base,
        use_rotary_position_embeddings=True, add_position_embedding=False, swiglu=True, normalization="rmsnorm",
        layernorm_epsilon=1e-5, add_bias_linear=False, untie_embeddings_and_output_weights=True,
        init_method_std=0.009, params_dtype=torch.bfloat16, bf16=True, fp16=False,
        tensor_model_parallel_size=4, pipeline_model_parallel_size=4,
        train_samples=phase.train_samples, global_batch_size=phase.global_batch_size,
        micro_batch_size=phase.micro_batch_size,
        rampup_batch_size=[str(rampup.start), str(rampup.increment), str(rampup.samples)] if rampup else None,
        lr=phase.lr.max_lr, min_lr=phase.lr.min_lr, lr_decay_style=phase.lr.style,
        lr_warmup_samples=phase.lr.warmup_samples, lr_decay_samples=phase.lr.decay_samples,
        weight_decay=phase.optimizer.weight_decay, clip_grad=phase.optimizer.clip_grad,
        adam_beta1=phase.optimizer.adam_beta1, adam_beta2=phase.optimizer.adam_beta2, adam_eps=phase.optimizer.adam_eps,
        consumed_train_samples=consumed_samples, consumed_train_tokens=consumed_tokens, seed=phase.seed,
    )


def lr_scheduler_state(phase: Phase, consumed_samples: int) -> dict:
    """Megatron's OptimizerParamScheduler.state_dict() of a sample-based run (steps counted in samples)."""
    return {
        "max_lr": phase.lr.max_lr, "lr_warmup_steps": phase.lr.warmup_samples, "lr_warmup_tokens": None,
        "num_steps": consumed_samples, "num_tokens": consumed_samples * phase.seq_length,
        "lr_decay_style": phase.lr.style, "lr_decay_steps": phase.lr.decay_samples, "lr_decay_tokens": None,
        "min_lr": phase.lr.min_lr, "start_wd": phase.optimizer.weight_decay, "end_wd": phase.optimizer.weight_decay,
        "wd_incr_style": "constant", "wd_incr_steps": phase.train_samples,
    }


def parameters(shape: LucieShape) -> list[tuple[str, tuple[int, ...]]]:
    """(universal name, shape) of every parameter, in pipeline-module order."""
    h, d, f, L = shape.hidden_size, shape.head_dim, shape.ffn_hidden_size, shape.num_layers
    names = [("1.word_embeddings.weight", (shape.vocab_size, h))]
    for layer in range(L):
        p = f"{layer + 2}."
        names += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attention.query.weight", (shape.num_attention_heads * d, h)),
            (p + "self_attention.key_value.weight", (2 * shape.num_query_groups * d, h)),
            (p + "self_attention.dense.weight", (h, shape.num_attention_heads * d)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.dense_h_to_4h.weight", (2 * f, h)),
            (p + "mlp.dense_4h_to_h.weight", (h, f)),
        ]
    return names + [(f"{L + 2}.weight", (h,)), (f"{L + 3}.lm_head.weight", (shape.vocab_size, h))]


def _state_file(name: str, size: tuple[int, ...], state: str, generator: torch.Generator, std: float) -> dict:
    """The dict ds_to_universal saves for one state of one parameter, its tensor drawn in place."""
    rows = size[0] + (128 if name.endswith(("word_embeddings.weight", "lm_head.weight")) else 0)
    storage = torch.zeros((rows, *size[1:]))  # vocabulary tensors: ds_to_universal's cut of the padding is a view
    tensor = storage[: size[0]]
    if state == "fp32":
        tensor.normal_(1.0, 0.2, generator=generator) if len(size) == 1 else tensor.normal_(0.0, std, generator=generator)
    elif state == "exp_avg":
        tensor.normal_(0.0, 1e-3, generator=generator)
    else:
        tensor.uniform_(1e-8, 1e-6, generator=generator)
    if len(size) == 1:
        return {"param": tensor}  # norms are TP-replicated: no cat_dim
    entry: dict = {"cat_dim": 1 if name.endswith(ROW_PARALLEL) else 0, "param": tensor}
    if name.endswith("mlp.dense_h_to_4h.weight"):
        entry["param_n_sub_params"] = 2
    if rows > size[0]:
        entry["vocab_tensor"] = True
    return entry


def write_universal(out: Path, shape: LucieShape, iteration: int, phase: Phase = PRETRAIN, seed: int = 0,
                    std: float = 0.05) -> Path:
    """A universal checkpoint of ``shape`` at ``iteration`` of ``phase``, with random weights and Adam moments."""
    schedule = PhaseSchedule(phase)
    consumed = schedule.consumed_samples(iteration)
    tokens = consumed * phase.seq_length
    generator = torch.Generator().manual_seed(seed)
    zero = out / "zero"
    names = parameters(shape)
    for name, size in names:
        folder = zero / name
        folder.mkdir(parents=True)
        for state in ("fp32", "exp_avg", "exp_avg_sq"):  # one tensor in memory at a time
            torch.save(_state_file(name, size, state, generator, std), folder / f"{state}.pt")
    group = {"betas": (phase.optimizer.adam_beta1, phase.optimizer.adam_beta2), "eps": phase.optimizer.adam_eps,
             "bias_correction": True, "amsgrad": False, "adam_w_mode": True, "lr": schedule.lr(iteration),
             "step": iteration}
    norms = [i for i, (_, size) in enumerate(names) if len(size) == 1]
    torch.save({
        "clip_grad": phase.optimizer.clip_grad, "partition_count": [32, 32], "ds_version": "0.12.6",
        "group_paddings": [0, 0],
        "param_groups": [{**group, "weight_decay": phase.optimizer.weight_decay, "params": [i for i in range(len(names)) if i not in norms]},
                         {**group, "weight_decay": 0.0, "params": norms}],
    }, zero / "optimizer_state.pt")
    args = megatron_args(shape, phase, consumed, tokens)
    states = {
        "module": None, "buffer_names": [], "optimizer": None,
        "param_shapes": [{name: torch.Size(size) for name, size in names}], "frozen_param_shapes": None,
        "shared_params": None, "frozen_param_fragments": None,
        "lr_scheduler": lr_scheduler_state(phase, consumed), "data_sampler": None, "random_ltd": None,
        "sparse_tensor_module_names": set(), "skipped_steps": 0, "global_steps": iteration, "global_samples": consumed,
        "dp_world_size": 32, "mp_world_size": 16, "ds_config": {"train_batch_size": phase.global_batch_size,
                                                                 "bf16": {"enabled": True}, "zero_optimization": {"stage": 0}},
        "ds_version": "0.12.6",
        "args": args, "checkpoint_version": 3.0, "iteration": iteration, "tokens": tokens,
        "universal_checkpoint_info": {"universal_checkpoint_version": 0.2, "original_vocab_size": shape.vocab_size,
                                      "padded_vocab_size": shape.vocab_size},
        "rng_state": [{"random_rng_state": (3, tuple(range(5)), None), "np_rng_state": np.random.RandomState(1).get_state(),
                       "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": None, "rng_tracker_states": {}}],
    }
    torch.save(states, out / "mp_rank_00_model_states.pt")
    return out


def tiny_universal(out: Path, iteration: int = 3, **kwargs) -> Path:
    """The test fixture: the tiny Lucie shape of the converter tests, at ``iteration`` of phase 1."""
    from converters_fixtures import tiny_shape

    return write_universal(out, tiny_shape(), iteration, **kwargs)


def full_width(layers: int) -> LucieShape:
    """Lucie-7B's widths with ``layers`` layers (the bench's model)."""
    return LucieShape(layers, LUCIE_7B.hidden_size, LUCIE_7B.ffn_hidden_size, LUCIE_7B.num_attention_heads,
                      LUCIE_7B.num_query_groups, LUCIE_7B.vocab_size)


@dataclass
class WatchedReads:
    """What ``UniversalCheckpoint.read`` returned while watched: each (name, state) read, and the most of its
    tensors alive at once."""

    reads: list[tuple[str, str]] = field(default_factory=list)
    most_alive: int = 0
    _alive: set[int] = field(default_factory=set)


@contextlib.contextmanager
def watched_universal_reads() -> Iterator[WatchedReads]:
    """Record every universal tensor read, and how many of the read tensors are alive at once."""
    import pytest

    from converters.universal.checkpoint import UniversalCheckpoint

    watched = WatchedReads()
    original_read = UniversalCheckpoint.read

    def watched_read(self, name, state="fp32"):
        tensor = original_read(self, name, state)
        watched.reads.append((name, state))
        watched._alive.add(id(tensor))
        watched.most_alive = max(watched.most_alive, len(watched._alive))
        weakref.finalize(tensor, watched._alive.discard, id(tensor))
        return tensor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UniversalCheckpoint, "read", watched_read)
        yield watched


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--iteration", type=int, default=5_000)
    options = parser.parse_args()
    write_universal(options.out, full_width(options.layers), options.iteration, std=0.02)
    print(options.out)
