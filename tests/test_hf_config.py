"""The config.json of an export at the end of each phase, field by field (the published Lucie-7B layout)."""

from __future__ import annotations

import pytest

from lucie_nemo.hf_config import hf_config

ARCHITECTURE = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.009, "intermediate_size": 12288, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.44.2", "use_cache": True, "vocab_size": 65024,
}
PHASE1_TOKENS = 762_144_064 * 4_096


@pytest.mark.parametrize(("phase", "context", "theta", "steps", "tokens"), [
    ("pretrain", 4_096, 500_000.0, 753_851, PHASE1_TOKENS),
    ("extension", 32_000, 20_000_000.0, 755_071, PHASE1_TOKENS + 156_160 * 32_000),
    ("anneal", 32_000, 20_000_000.0, 756_291, PHASE1_TOKENS + 2 * 156_160 * 32_000),
])
def test_end_of_phase_config(phase, context, theta, steps, tokens):
    expected = {**ARCHITECTURE, "max_position_embeddings": context, "rope_theta": theta,
                "training_steps": steps, "training_tokens": tokens}
    assert hf_config(phase) == expected


def test_config_loads_in_transformers_with_lucie_rope():
    from transformers import LlamaConfig

    config = LlamaConfig(**hf_config("extension", 250))
    assert config.num_key_value_heads == 8 and config.max_position_embeddings == 32_000
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == 20_000_000.0
    assert rope.get("rope_type", "default") == "default"
