"""DeepSpeed universal checkpoint -> Hugging Face LlamaForCausalLM folder: bf16 of ``fp32.pt``, streamed.

The weights are those the fork's ``universal_to_hf_llama.py`` writes (bf16 of each ``fp32.pt``, K/V split per
key-value head); the config, generation config, tokenizer and model card are those of ``lucie export``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from converters.export import ExportResult, write_revision_files
from converters.hf_writer import DEFAULT_SHARD_SIZE, parse_size, plan_shards, write_shards
from converters.layout import HFTensor, hf_tensors, select
from converters.run_progress import RunProgress
from converters.universal.checkpoint import UniversalCheckpoint
from converters.universal.facts import check_run_facts
from lucie_nemo.architecture import LUCIE_7B
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import hf_config
from lucie_nemo.schedule import PhaseSchedule
from lucie_nemo.staging import staged_folder
from lucie_nemo.tokenizer import load_tokenizer


class _UniversalProducer:
    """Each Hugging Face tensor cut out of its re-packed source tensor (q/k/v from one QKV, gate/up from one fc1);
    only the current source tensor is held."""

    def __init__(self, checkpoint: UniversalCheckpoint):
        self.checkpoint = checkpoint
        self._current: tuple[tuple[str, int | None], torch.Tensor] | None = None

    def __call__(self, item: HFTensor) -> torch.Tensor:
        key = (item.source, item.layer)
        if self._current is None or self._current[0] != key:
            self._current = None
            self._current = key, self.checkpoint.megatron(item.source, item.layer)
        return select(self._current[1], item, self.checkpoint.shape)


def export_universal(
    folder: str | Path,
    out: str | Path,
    phase: str | None = None,
    step: int | None = None,
    tokenizer: str | None = None,
    shard_size: str = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> ExportResult:
    """Write the weights of universal checkpoint ``folder`` as a Hugging Face folder at ``out``."""
    checkpoint = UniversalCheckpoint(folder)
    resolved = checkpoint.phase(phase)
    check_run_facts(checkpoint, resolved)  # the revision is named after the phase's step
    iteration = checkpoint.info.iteration
    if step is not None and step != iteration:
        raise UserError(f"{folder} is iteration {iteration}, not step {step}: drop --step or pass the right one")
    if tokenizer is None:
        raise UserError(f"{folder} ships no tokenizer (a universal checkpoint has none): pass --tokenizer FOLDER_OR_HUB_ID")
    size = load_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)
    if size > checkpoint.shape.vocab_size:
        raise UserError(f"tokenizer {tokenizer} has {size} entries, the model's vocabulary {checkpoint.shape.vocab_size}")
    shape = checkpoint.shape
    shards = plan_shards(hf_tensors(shape), parse_size(shard_size))
    with staged_folder(out) as staging:
        write_shards(staging, shards, _UniversalProducer(checkpoint), progress)
        config = hf_config(resolved, iteration, shape=shape, norm_eps=checkpoint.arg("layernorm_epsilon"),
                           init_std=getattr(checkpoint.info.args, "init_method_std", 0.009))
        record = PhaseSchedule(resolved).record(iteration)  # equal to the file's samples and tokens (checked above)
        run = RunProgress(record.cumulative_step, record.cumulative_tokens, lucie_run=shape == LUCIE_7B,
                          source="the original run's universal checkpoint (its iteration and consumed samples)")
        write_revision_files(staging, resolved, iteration, shape, run, config, tokenizer)
    return ExportResult(Path(out), resolved, iteration, resolved.revision(iteration), shape, sum(map(len, shards)), len(shards))
