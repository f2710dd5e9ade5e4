"""Read a DeepSpeed universal checkpoint of Lucie (the released optimizer states), one parameter at a time.

The format is the one the Megatron-DeepSpeed fork's ``tools/convert_checkpoint/ds_to_universal.py`` writes:
``mp_rank_XX_model_states.pt`` (Megatron's ``args``, ``iteration``, ``checkpoint_version``, ``tokens``,
``lr_scheduler``, DeepSpeed's counters), ``zero/optimizer_state.pt`` (``param_groups``) and, per parameter,
``zero/<pipeline-module name>/{fp32,exp_avg,exp_avg_sq}.pt`` holding ``{"param": full fp32 tensor, ...}``.
Tensors come out re-packed to megatron-core's local-spec layout (fused QKV per query group, fc1 = [gate; up])
with the weight mapping of the fork's ``universal_to_hf_llama.py``.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from converters.layout import EMBEDDING, FINAL_NORM, LAYER_TENSORS, OUTPUT_LAYER, merge_qkv
from lucie_nemo.errors import UserError
from lucie_nemo.architecture import LucieShape
from lucie_nemo.phases import PHASES, Phase, get_phase, trained_phase

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO = "zero"
OPTIMIZER_STATE = "optimizer_state.pt"
CHECKPOINT_VERSION = 3.0
LUCIE_VOCABULARY = 65_024
STATES = ("fp32", "exp_avg", "exp_avg_sq")

# Megatron-DeepSpeed arguments that make a model Lucie-shaped, with Lucie's values.
_LUCIE_ARGS: dict[str, Any] = {
    "swiglu": True,
    "normalization": "rmsnorm",
    "add_bias_linear": False,
    "untie_embeddings_and_output_weights": True,
    "use_rotary_position_embeddings": True,
    "padded_vocab_size": LUCIE_VOCABULARY,
}


def is_universal(path: str | Path) -> bool:
    """Whether ``path`` is a DeepSpeed universal checkpoint folder (``zero/`` and the rank-0 model states)."""
    path = Path(path)
    return (path / ZERO).is_dir() and (path / MODEL_STATES).is_file()


def _stand_in(qualified: str) -> type:
    """A class that takes the place of ``qualified`` when unpickling: it only keeps its arguments and state."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    module, _, name = qualified.rpartition(".")
    return type(name, (), {"__module__": module, "__init__": __init__, "__setstate__": __setstate__})


def load_pickle(path: Path) -> Any:
    """``torch.load`` of a DeepSpeed / Megatron file with torch's weights-only unpickler.

    Such files also pickle objects of libraries that are not installed here (Megatron's enums, numpy RNG
    states): each is read as an inert stand-in, so nothing from the file is executed.
    """
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        known = [(argparse.Namespace, name) if name == "argparse.Namespace" else (_stand_in(name), name) for name in unknown]
        with torch.serialization.safe_globals(known):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UserError(f"{path} is not a readable torch file ({str(error).splitlines()[0]}): the checkpoint is damaged") from None


@dataclass(frozen=True)
class UniversalInfo:
    """What ``mp_rank_00_model_states.pt`` says about the run."""

    args: argparse.Namespace
    iteration: int
    tokens: int
    lr_scheduler: dict[str, Any]
    global_steps: int | None
    global_samples: int | None


def parameter_names(num_layers: int) -> dict[str, str | tuple[str, int]]:
    """Universal parameter name -> Megatron source (EMBEDDING, FINAL_NORM, OUTPUT_LAYER) or (fork tensor, layer)."""
    names: dict[str, str | tuple[str, int]] = {"1.word_embeddings.weight": EMBEDDING}
    for layer in range(num_layers):
        for local in ("input_layernorm.weight", "self_attention.query.weight", "self_attention.key_value.weight",
                      "self_attention.dense.weight", "post_attention_layernorm.weight", "mlp.dense_h_to_4h.weight",
                      "mlp.dense_4h_to_h.weight"):
            names[f"{layer + 2}.{local}"] = (local, layer)
    names[f"{num_layers + 2}.weight"] = FINAL_NORM
    names[f"{num_layers + 3}.lm_head.weight"] = OUTPUT_LAYER
    return names


class UniversalCheckpoint:
    """One universal checkpoint folder: its run facts, and its parameters read one at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not is_universal(self.folder):
            raise UserError(
                f"{self.folder} is not a DeepSpeed universal checkpoint (it needs {MODEL_STATES} and {ZERO}/): "
                "pass the folder of one global_step (a branch of OpenLLM-France/Lucie-7B-optimizer-states)"
            )
        states = load_pickle(self.folder / MODEL_STATES)
        if not isinstance(states, dict) or not isinstance(states.get("args"), argparse.Namespace):
            raise UserError(f"{self.folder / MODEL_STATES} holds no Megatron args: not a Megatron-DeepSpeed checkpoint")
        version = states.get("checkpoint_version")
        if version != CHECKPOINT_VERSION:
            raise UserError(
                f"{self.folder / MODEL_STATES} has checkpoint_version {version}, this reader knows {CHECKPOINT_VERSION} "
                "(query/key_value layouts differ): convert it with a Megatron-DeepSpeed of Lucie's time"
            )
        for key in ("iteration", "tokens", "lr_scheduler"):
            if key not in states:
                raise UserError(f"{self.folder / MODEL_STATES} has no {key!r}: the checkpoint is incomplete")
        self.info = UniversalInfo(states["args"], int(states["iteration"]), int(states["tokens"]), dict(states["lr_scheduler"]),
                                  states.get("global_steps"), states.get("global_samples"))
        self.shape = self._shape()
        self.names = parameter_names(self.shape.num_layers)
        self._check_files()

    def arg(self, name: str) -> Any:
        if not hasattr(self.info.args, name):
            raise UserError(f"{self.folder / MODEL_STATES}: its args have no {name!r}: not a Megatron-DeepSpeed GPT run")
        return getattr(self.info.args, name)

    def _shape(self) -> LucieShape:
        """Lucie's sizes from ``args``, refusing a model that is not Lucie-shaped."""
        for field, required in _LUCIE_ARGS.items():
            if self.arg(field) != required:
                raise UserError(
                    f"{self.folder / MODEL_STATES}: args.{field} is {self.arg(field)!r}, a Lucie model has {required!r}: "
                    "not a Lucie-shaped checkpoint"
                )
        heads = self.arg("num_attention_heads")
        groups = self.arg("num_key_value_heads") or heads
        shape = LucieShape(num_layers=self.arg("num_layers"), hidden_size=self.arg("hidden_size"),
                           ffn_hidden_size=self.arg("ffn_hidden_size"), num_attention_heads=heads,
                           num_query_groups=groups, vocab_size=self.arg("padded_vocab_size"))
        kv_channels = getattr(self.info.args, "kv_channels", None)
        if shape.hidden_size % heads or heads % groups or kv_channels not in (None, shape.head_dim):
            raise UserError(
                f"{self.folder / MODEL_STATES}: hidden {shape.hidden_size}, {heads} heads, {groups} key-value heads, "
                f"kv_channels {kv_channels} are not a Lucie attention layout"
            )
        return shape

    def expected_shape(self, name: str) -> tuple[int, ...]:
        """The full shape of universal parameter ``name`` that ``args`` implies."""
        s = self.shape
        h, d, f = s.hidden_size, s.head_dim, s.ffn_hidden_size
        source = self.names[name]
        if source in (EMBEDDING, OUTPUT_LAYER):
            return (s.vocab_size, h)
        if source == FINAL_NORM:
            return (h,)
        return {
            "input_layernorm.weight": (h,),
            "self_attention.query.weight": (s.num_attention_heads * d, h),
            "self_attention.key_value.weight": (2 * s.num_query_groups * d, h),
            "self_attention.dense.weight": (h, s.num_attention_heads * d),
            "post_attention_layernorm.weight": (h,),
            "mlp.dense_h_to_4h.weight": (2 * f, h),
            "mlp.dense_4h_to_h.weight": (h, f),
        }[source[0]]

    def _check_files(self) -> None:
        """Every parameter folder and state file is there (reading is left for later, one tensor at a time)."""
        zero = self.folder / ZERO
        if not (zero / OPTIMIZER_STATE).is_file():
            raise UserError(f"{zero / OPTIMIZER_STATE} is missing: the checkpoint is incomplete")
        for name in self.names:
            if not (zero / name).is_dir():
                raise UserError(f"{zero / name}/ is missing: the checkpoint is incomplete (a Lucie model of "
                                f"{self.shape.num_layers} layers, as its args say, has this parameter)")
            for state in STATES:
                if not (zero / name / f"{state}.pt").is_file():
                    raise UserError(f"{zero / name / state}.pt is missing: the checkpoint is incomplete")

    def read(self, name: str, state: str = "fp32") -> torch.Tensor:
        """Full fp32 tensor ``state`` of universal parameter ``name``, its shape checked against ``args``."""
        path = self.folder / ZERO / name / f"{state}.pt"
        content = load_pickle(path)
        tensor = content.get("param") if isinstance(content, dict) else content
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path} holds no tensor under 'param': the checkpoint is damaged")
        expected = self.expected_shape(name)
        if self.names[name] in (EMBEDDING, OUTPUT_LAYER) and tensor.dim() == 2 and tensor.shape[0] > expected[0]:
            tensor = tensor[: expected[0]]  # vocabulary padding, cut as the fork's universal_to_hf_llama.py does
        if tuple(tensor.shape) != expected:
            raise UserError(f"{path} has shape {tuple(tensor.shape)}, the checkpoint's args imply {expected}")
        return tensor

    def _layer_name(self, local: str, layer: int) -> str:
        return f"{layer + 2}.{local}"

    def megatron(self, source: str, layer: int | None = None, state: str = "fp32") -> torch.Tensor:
        """Megatron tensor ``source`` (EMBEDDING, FINAL_NORM, OUTPUT_LAYER or a LAYER_TENSORS key) of ``layer``, in
        megatron-core's local-spec layout, from the universal tensors ``state`` (the same re-packing for all)."""
        if source == EMBEDDING:
            return self.read("1.word_embeddings.weight", state)
        if source == FINAL_NORM:
            return self.read(f"{self.shape.num_layers + 2}.weight", state)
        if source == OUTPUT_LAYER:
            return self.read(f"{self.shape.num_layers + 3}.lm_head.weight", state)
        if source not in LAYER_TENSORS:
            raise KeyError(source)
        fork = {"attn_norm": "input_layernorm.weight", "proj": "self_attention.dense.weight",
                "mlp_norm": "post_attention_layernorm.weight", "fc1": "mlp.dense_h_to_4h.weight",
                "fc2": "mlp.dense_4h_to_h.weight"}
        if source in fork:  # fc1 is [gate; up] on both sides
            return self.read(self._layer_name(fork[source], layer), state)
        query = self.read(self._layer_name("self_attention.query.weight", layer), state)
        key_value = self.read(self._layer_name("self_attention.key_value.weight", layer), state)
        s = self.shape
        # checkpoint_version 3.0: for each key-value head, its K rows then its V rows
        grouped = key_value.view(s.num_query_groups, 2, s.head_dim, s.hidden_size)
        keys, values = grouped[:, 0].reshape(-1, s.hidden_size), grouped[:, 1].reshape(-1, s.hidden_size)
        return merge_qkv(query, keys, values, s)

    def megatron_names(self) -> Iterator[tuple[str, str, int | None]]:
        """(local-spec parameter name, Megatron source, layer) of the whole model, in model order."""
        local = {"attn_norm": "input_layernorm.weight", "qkv": "self_attention.linear_qkv.weight",
                 "proj": "self_attention.linear_proj.weight", "mlp_norm": "pre_mlp_layernorm.weight",
                 "fc1": "mlp.linear_fc1.weight", "fc2": "mlp.linear_fc2.weight"}
        yield EMBEDDING, EMBEDDING, None
        for layer in range(self.shape.num_layers):
            for logical, name in local.items():
                yield f"decoder.layers.{layer}.{name}", logical, layer
        yield FINAL_NORM, FINAL_NORM, None
        yield OUTPUT_LAYER, OUTPUT_LAYER, None

    def megatron_tensors(self, state: str = "fp32") -> Iterator[tuple[str, torch.Tensor]]:
        """(local-spec parameter name, tensor) of the whole model, one parameter at a time."""
        for name, source, layer in self.megatron_names():
            yield name, self.megatron(source, layer, state)

    def phase(self, name: str | None = None, tiny: bool = False) -> Phase:
        """The phase whose context length and RoPE theta the run's args have, checked against ``name`` if given
        (``tiny``: among the scaled-down phases of ``lucie train --tiny``)."""
        key = (self.arg("seq_length"), int(self.arg("rope_theta")))
        phases = [trained_phase(p, tiny) for p in PHASES]
        matches = [p for p in phases if (p.seq_length, p.rotary_base) == key]
        if name is None:
            if len(matches) != 1:
                raise UserError(f"{self.folder}: seq_length/rope_theta {key} is no {'scaled-down ' if tiny else ''}"
                                "Lucie phase's: pass --phase")
            return matches[0]
        get_phase(name)
        phase = trained_phase(name, tiny)
        if (phase.seq_length, phase.rotary_base) != key:
            raise UserError(f"{self.folder} has seq_length/rope_theta {key}, phase {phase.name!r} has "
                            f"{(phase.seq_length, phase.rotary_base)}: pass the phase the checkpoint belongs to")
        return phase
