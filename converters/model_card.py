"""The model card (README.md) of an exported revision: YAML header with training progress, then a short text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lucie_nemo.architecture import LucieShape
from lucie_nemo.errors import UserError
from lucie_nemo.phases import Phase

if TYPE_CHECKING:
    from converters.run_progress import RunProgress

LANGUAGES = ["fr", "en", "de", "es", "it"]
LUCIE_RUN_TAG = "pretrained"  # the real Lucie-7B run; other runs of the recipes are tagged "lucie-recipes"


@dataclass(frozen=True)
class CardFacts:
    """What an exported model card's YAML header says about the checkpoint."""

    revision: str | None  # the revision name the export recorded (None: a card written before it did)
    lucie_run: bool  # tagged as a checkpoint of the real Lucie-7B run
    num_steps: int | None  # training_progress.num_steps


def model_card(phase: Phase, step: int, shape: LucieShape, progress: RunProgress) -> str:
    """README.md for ``phase`` at ``step``; ``training_progress`` counts the run's steps and tokens cumulatively,
    and the text says whether the run is the real Lucie-7B one or a scaled-down / other run."""
    revision = phase.revision(step)
    header = {
        "license": "apache-2.0",
        "language": LANGUAGES,
        "pipeline_tag": "text-generation",
        "tags": ["lucie", "llama", LUCIE_RUN_TAG] if progress.lucie_run else ["lucie", "llama", "lucie-recipes"],
        "training_progress": {
            "num_steps": progress.cumulative_step,
            "num_tokens": progress.cumulative_tokens,
            "context_length": phase.seq_length,
        },
        "revision": revision,  # the run's own phase and step: what `lucie publish` names the branch
    }
    run = ("A checkpoint of the Lucie-7B training run." if progress.lucie_run else
           "**Not Lucie-7B**: a checkpoint of a scaled-down (demo or test) or otherwise different run of the Lucie "
           "recipes; its steps and tokens are that run's own.")
    return (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        f"# Lucie ({revision})\n\n"
        f"{run}\n\n"
        f"Checkpoint of phase `{phase.name}` at step {step:,} "
        f"({progress.cumulative_step:,} steps and {progress.cumulative_tokens:,} tokens since the start of training, "
        f"from {progress.source}), context length {phase.seq_length:,}, RoPE theta {phase.rotary_base:,}.\n\n"
        f"Llama architecture: {shape.num_layers} layers, hidden size {shape.hidden_size:,}, "
        f"FFN {shape.ffn_hidden_size:,}, {shape.num_attention_heads} attention heads, "
        f"{shape.num_query_groups} key/value heads, vocabulary {shape.vocab_size:,}; bf16 weights.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("REPO", revision="{revision}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("REPO", revision="{revision}")\n```\n'
    )


def read_card(path: Path) -> CardFacts:
    """The facts of the model card at ``path`` (README.md) from its YAML header."""
    text = path.read_text("utf-8")
    parts = text.split("---\n", 2)
    if not text.startswith("---\n") or len(parts) < 3:
        raise UserError(f"{path} has no YAML header (--- ... ---): not a model card written by `lucie export`")
    try:
        header = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}'s YAML header is not readable ({error}): re-export the folder with `lucie export`") from None
    progress = header.get("training_progress") or {}
    revision = header.get("revision")
    return CardFacts(str(revision) if revision is not None else None, LUCIE_RUN_TAG in (header.get("tags") or []),
                     progress.get("num_steps") if isinstance(progress, dict) else None)
