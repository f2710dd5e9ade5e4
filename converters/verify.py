"""Compare a training checkpoint and a Hugging Face folder by their logits and greedy continuations.

The Megatron side is the Lucie model of lucie_nemo.model (local layers, CPU, fp32) with the checkpoint
loaded by megatron-core's own dist_checkpointing; its weights are then rounded to bf16, the precision of
the published safetensors, so that the comparison measures the conversion, not the bf16 rounding.
The Hugging Face side is transformers' LlamaForCausalLM in fp32. Prompts are tokenized with load_tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from converters.hf_writer import check_folder, read_json
from converters.megatron_model import local_provider
from converters.megatron_reader import CheckpointTensors, LayerTensors, locate, read_shape
from lucie_nemo.distributed import single_process_world
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import shape_from_hf_config
from lucie_nemo.phases import PRETRAIN
from lucie_nemo.tokenizer import load_tokenizer

PROMPTS: dict[str, str] = {
    "fr": "La capitale de la France est Paris. Elle est connue pour",
    "en": "The quick brown fox jumps over the lazy dog, and then",
    "de": "Die Hauptstadt von Deutschland ist Berlin. Sie ist bekannt für",
    "es": "La capital de España es Madrid. Es famosa por",
    "it": "La capitale d'Italia è Roma. È famosa per",
    "code": "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return",
}
DEFAULT_TOLERANCE = 1e-3
DEFAULT_NEW_TOKENS = 8


@dataclass(frozen=True)
class PromptResult:
    language: str
    max_abs_diff: float
    megatron_tokens: list[int]
    hf_tokens: list[int]

    @property
    def same_continuation(self) -> bool:
        return self.megatron_tokens == self.hf_tokens


@dataclass(frozen=True)
class VerifyResult:
    prompts: list[PromptResult]
    tolerance: float

    @property
    def max_abs_diff(self) -> float:
        return max(p.max_abs_diff for p in self.prompts)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and all(p.same_continuation for p in self.prompts)


def _megatron_model(ckpt: str | Path, config: dict):
    """The checkpoint's model, built from lucie_nemo.model and loaded with dist_checkpointing (inside a world)."""
    from megatron.core import dist_checkpointing

    info = locate(ckpt)
    tensors = CheckpointTensors(info)
    shape = read_shape(tensors, LayerTensors(tensors))
    if shape != shape_from_hf_config(config):
        raise UserError(f"checkpoint {ckpt} is {shape}, the Hugging Face folder is {shape_from_hf_config(config)}")
    if "rotary_base" not in info.model_config:
        raise UserError(f"checkpoint {ckpt} does not say its RoPE theta (rotary_base): cannot rebuild its model")
    # The phase only sets context length and RoPE theta; theta is the one the checkpoint trained with.
    model = local_provider(shape, PRETRAIN, torch.float32, rotary_base=info.model_config["rotary_base"]).provide()
    sharded = model.sharded_state_dict(prefix=tensors.prefix)
    loaded = dist_checkpointing.load(sharded, str(info.weights_dir))
    loaded = _strip({key: loaded[key] for key in sharded}, tensors.prefix)  # the common state is left out
    result = model.load_state_dict(loaded, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise UserError(f"checkpoint {ckpt} did not load into the Lucie model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))
    return model.eval()


def _strip(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items()}


def _megatron_logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    return model(input_ids=ids, position_ids=positions, attention_mask=None).float()


def _hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def _greedy(logits_of, ids: torch.Tensor, new_tokens: int) -> list[int]:
    generated: list[int] = []
    for _ in range(new_tokens):
        next_id = int(logits_of(ids)[0, -1].argmax())
        generated.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return generated


def verify(ckpt: str | Path, hf_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE,
           new_tokens: int = DEFAULT_NEW_TOKENS) -> VerifyResult:
    """Logits of both models on PROMPTS (max abs difference) and their greedy continuations."""
    from transformers import LlamaForCausalLM

    hf_dir = Path(hf_dir)
    check_folder(hf_dir)
    config = read_json(hf_dir / "config.json")
    tokenizer = load_tokenizer(hf_dir)
    hf_model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    results = []
    with single_process_world(), torch.no_grad():
        megatron = _megatron_model(ckpt, config)
        for language, text in PROMPTS.items():
            ids = torch.tensor([tokenizer.encode(text).ids])
            diff = (_megatron_logits(megatron, ids) - _hf_logits(hf_model, ids)).abs().max().item()
            results.append(PromptResult(
                language, diff,
                _greedy(lambda x: _megatron_logits(megatron, x), ids, new_tokens),
                _greedy(lambda x: _hf_logits(hf_model, x), ids, new_tokens),
            ))
    return VerifyResult(results, tolerance)
