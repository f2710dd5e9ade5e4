"""The Hugging Face ``config.json`` of a Lucie checkpoint, as the published revisions have it.

Classic top-level keys (``rope_theta``, ``rope_scaling: null``, ``torch_dtype``) so that
transformers 4.x and 5.x, vLLM and llama.cpp's converter read it alike; newer
transformers releases would write a different RoPE layout by default.
"""

from __future__ import annotations

from lucie_nemo.errors import UserError
from lucie_nemo.architecture import LUCIE_7B, LucieShape
from lucie_nemo.phases import Phase, get_phase
from lucie_nemo.schedule import PhaseSchedule
from lucie_nemo.tokenizer import BOS_ID, EOS_ID

TRANSFORMERS_VERSION_WRITTEN = "4.44.2"  # the version the published Lucie-7B configs name


def llama3_rope_scaling(factor: float) -> dict:
    """config.json's ``rope_scaling`` of megatron-core's Llama 3.1 RoPE scaling (``rope_scaling=True``), whose
    other constants are fixed there (low/high frequency factors 1 and 4, original context 8,192)."""
    return {"factor": float(factor), "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def hf_config(phase: Phase | str, step: int | None = None, shape: LucieShape = LUCIE_7B,
              init_std: float = 0.009, norm_eps: float = 1e-5, rope_scaling: dict | None = None) -> dict:
    """config.json for ``phase`` at ``step`` (default: the phase's last step); Lucie has no ``rope_scaling``, a
    checkpoint trained with one keeps it."""
    phase = get_phase(phase) if isinstance(phase, str) else phase
    schedule = PhaseSchedule(phase)
    step = schedule.train_iters if step is None else step
    record = schedule.record(step)
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": init_std,
        "intermediate_size": shape.ffn_hidden_size,
        "max_position_embeddings": phase.seq_length,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_query_groups,
        "pretraining_tp": 1,
        "rms_norm_eps": norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": float(phase.rotary_base),
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "training_steps": record.cumulative_step,
        "training_tokens": record.cumulative_tokens,
        "transformers_version": TRANSFORMERS_VERSION_WRITTEN,
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


# Fields of a config.json that make a Hugging Face folder Lucie-shaped (field -> required value).
_LUCIE_HF_RULES = {
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "rope_scaling": None,
}


def shape_from_hf_config(config: dict, source: str = "config.json", llama3_scaling: bool = False) -> LucieShape:
    """The LucieShape of a Hugging Face ``config.json``; refuse a config that is not Lucie-shaped (but, with
    ``llama3_scaling``, for a Llama 3.1 ``rope_scaling``: an export of a checkpoint trained with it)."""
    for field, required in _LUCIE_HF_RULES.items():
        if llama3_scaling and field == "rope_scaling" and _is_llama3(config.get(field)):
            continue
        if config.get(field, required) != required:
            raise UserError(f"{source} has {field}={config[field]!r}, a Lucie model has {required!r}: not a Lucie-shaped model")
    if config.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        raise UserError(f"{source} declares {config['architectures']}, a Lucie model is a LlamaForCausalLM")
    try:
        shape = LucieShape(
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            ffn_hidden_size=config["intermediate_size"],
            num_attention_heads=config["num_attention_heads"],
            num_query_groups=config.get("num_key_value_heads", config["num_attention_heads"]),
            vocab_size=config["vocab_size"],
        )
    except KeyError as missing:
        raise UserError(f"{source} has no {missing} field: not a Llama config") from None
    if config.get("head_dim", shape.head_dim) != shape.head_dim:
        raise UserError(f"{source} has head_dim={config['head_dim']}, Lucie has hidden_size / heads = {shape.head_dim}")
    rope_theta_of(config, source, llama3_scaling)
    return shape


def _is_llama3(rope: dict | None) -> bool:
    return isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "llama3"


def rope_theta_of(config: dict, source: str = "config.json", llama3_scaling: bool = False) -> float | None:
    """RoPE theta of a config.json, classic (``rope_theta``) or transformers 5 (``rope_parameters``) layout."""
    parameters = config.get("rope_parameters") or {}
    if parameters.get("rope_type", "default") != "default" and not (llama3_scaling and _is_llama3(parameters)):
        raise UserError(f"{source} uses RoPE scaling {parameters['rope_type']!r}: Lucie has none")
    return config.get("rope_theta", parameters.get("rope_theta"))
