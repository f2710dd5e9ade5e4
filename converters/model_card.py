"""The model card (README.md) of an exported revision: YAML header with training progress, then a short text."""

from __future__ import annotations

import yaml

from lucie_nemo.architecture import LucieShape
from lucie_nemo.phases import Phase
from lucie_nemo.schedule import StepRecord

LANGUAGES = ["fr", "en", "de", "es", "it"]


def model_card(phase: Phase, record: StepRecord, shape: LucieShape) -> str:
    """README.md for ``phase`` at ``record.step``; ``training_progress`` counts steps and tokens cumulatively."""
    header = {
        "license": "apache-2.0",
        "language": LANGUAGES,
        "pipeline_tag": "text-generation",
        "tags": ["lucie", "llama", "pretrained"],
        "training_progress": {
            "num_steps": record.cumulative_step,
            "num_tokens": record.cumulative_tokens,
            "context_length": phase.seq_length,
        },
    }
    revision = phase.revision(record.step)
    return (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        f"# Lucie ({revision})\n\n"
        f"Checkpoint of phase `{phase.name}` at step {record.step:,} "
        f"({record.cumulative_step:,} steps and {record.cumulative_tokens:,} tokens since the start of training), "
        f"context length {phase.seq_length:,}, RoPE theta {phase.rotary_base:,}.\n\n"
        f"Llama architecture: {shape.num_layers} layers, hidden size {shape.hidden_size:,}, "
        f"FFN {shape.ffn_hidden_size:,}, {shape.num_attention_heads} attention heads, "
        f"{shape.num_query_groups} key/value heads, vocabulary {shape.vocab_size:,}; bf16 weights.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("REPO", revision="{revision}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("REPO", revision="{revision}")\n```\n'
    )
