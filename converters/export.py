"""Training checkpoint -> Hugging Face LlamaForCausalLM folder (streamed, checked, renamed into place)."""

from __future__ import annotations

import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import torch

from converters.hf_writer import DEFAULT_SHARD_SIZE, check_folder, parse_size, plan_shards, write_shards
from converters.layout import EMBEDDING, FINAL_NORM, OUTPUT_LAYER, HFTensor, hf_tensors, select
from converters.checkpoint_source import opened
from converters.megatron_reader import CheckpointInfo, CheckpointTensors, LayerTensors, read_shape, rope_scaling_of
from converters.model_card import model_card
from converters.read_ahead import ReadAhead
from converters.run_progress import RunProgress, run_progress
from lucie_nemo.staging import staged_folder
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import hf_config
from lucie_nemo.architecture import LucieShape
from lucie_nemo.phases import PHASES, Phase, get_phase
from lucie_nemo.tokenizer import BOS_ID, EOS_ID, export_tokenizer, load_tokenizer

READ_AHEAD_BYTES = 2**30  # checkpoint tensors read and not yet written, at most (or one tensor if larger)
GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    out: Path
    phase: Phase
    step: int
    revision: str
    shape: LucieShape
    num_tensors: int
    num_shards: int


def resolve_phase(info: CheckpointInfo, name: str | None) -> Phase:
    """The phase the checkpoint says (its context length and RoPE theta), checked against ``name`` if given."""
    seq, theta = info.model_config.get("seq_length"), info.model_config.get("rotary_base")
    matches = [p for p in PHASES.values() if (p.seq_length, p.rotary_base) == (seq, theta)]
    if name is None:
        if len(matches) != 1:
            said = f"seq_length={seq}, rotary_base={theta}"
            raise UserError(f"cannot tell the phase of {info.path} from its config ({said}): pass --phase")
        return matches[0]
    phase = get_phase(name)
    if theta is not None and theta != phase.rotary_base:
        raise UserError(
            f"{info.path} was trained with rotary_base={theta}, phase {phase.name!r} uses {phase.rotary_base}: "
            "pass the phase the checkpoint belongs to"
        )
    if len(matches) == 1 and matches[0] is not phase:
        raise UserError(f"{info.path} is a {matches[0].name!r} checkpoint by its config, not {phase.name!r}")
    return phase


def resolve_step(info: CheckpointInfo, step: int | None) -> int:
    """The iteration the checkpoint says, checked against ``step`` if given."""
    if info.iteration is None:
        if step is None and info.kind == "nemo2":
            raise UserError(f"{info.path} does not say its step (no global_step in its weights' common state, no "
                            "step=N in its name): a folder NeMo imported from Hugging Face and never trained is step 0, "
                            "pass --step 0; a trained one, pass --step N")
        if step is None:
            raise UserError(f"{info.path} does not say its iteration: pass --step")
        return step
    if step is not None and step != info.iteration:
        raise UserError(f"{info.path} is iteration {info.iteration}, not step {step}: drop --step or pass the right one")
    return info.iteration


def tokenizer_source(info: CheckpointInfo, tokenizer: str | None, shape: LucieShape) -> str:
    """``tokenizer`` or the checkpoint's own tokenizer folder, refused if it has ids beyond the vocabulary."""
    if tokenizer is None and info.tokenizer_dir is None:
        raise UserError(f"{info.path} ships no tokenizer (no tokenizer.json in it): pass --tokenizer FOLDER_OR_HUB_ID")
    source = tokenizer if tokenizer is not None else str(info.tokenizer_dir)
    size = load_tokenizer(source).get_vocab_size(with_added_tokens=True)
    if size > shape.vocab_size:
        raise UserError(f"tokenizer {source} has {size} entries, the model's vocabulary {shape.vocab_size}: pass the tokenizer it was trained with")
    return source


_SourceKey = tuple[str, int | None]  # (checkpoint tensor, layer)


def _source_key(item: HFTensor) -> _SourceKey:
    return item.source, item.layer


class _Producer:
    """Cuts each Hugging Face tensor out of the checkpoint tensor it comes from (q/k/v from one QKV read,
    gate/up from one FC1 read), called in the shards' order.

    A background thread reads the checkpoint tensors in that order up to READ_AHEAD_BYTES ahead of the tensor
    being written (converters.read_ahead), so reading, re-packing and writing overlap with bounded memory.
    """

    def __init__(self, tensors: CheckpointTensors, layers: LayerTensors, shape: LucieShape, order: list[HFTensor]):
        self.tensors, self.layers, self.shape = tensors, layers, shape
        keys = [key for key, _ in groupby(order, key=_source_key)]
        sizes = [math.prod(self._shape(key)) * self._dtype(key).itemsize for key in keys]
        self._reader = ReadAhead(self._read, keys, sizes, READ_AHEAD_BYTES)
        self._sources = iter(self._reader)
        self._current: tuple[_SourceKey, torch.Tensor] | None = None

    def _read(self, key: _SourceKey) -> torch.Tensor:
        source, layer = key
        if source in (EMBEDDING, FINAL_NORM, OUTPUT_LAYER):
            return self.tensors.read(source)
        return self.layers.read(source, layer)

    def _shape(self, key: _SourceKey) -> tuple[int, ...]:
        source, layer = key
        return self.tensors.shape(source) if layer is None else self.layers.shape(source)

    def _dtype(self, key: _SourceKey) -> torch.dtype:
        source, layer = key
        return self.tensors.dtype(source if layer is None else self.layers.stored_name(source, layer))

    def __call__(self, item: HFTensor) -> torch.Tensor:
        if self._current is None or self._current[0] != _source_key(item):
            self._current = None  # free the previous tensor before taking the next
            self._current = next(self._sources)
        return select(self._current[1], item, self.shape)

    def close(self) -> None:
        self._reader.close()


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    phase: str | None = None,
    step: int | None = None,
    tokenizer: str | None = None,
    shard_size: str = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> ExportResult:
    """Write ``ckpt`` as a Hugging Face LlamaForCausalLM folder at ``out`` (bf16 shards, configs, tokenizer, card)."""
    with opened(ckpt) as info:
        return _export(info, Path(out), phase, step, tokenizer, shard_size, progress)


def _export(info: CheckpointInfo, out: Path, phase: str | None, step: int | None, tokenizer: str | None,
            shard_size: str, progress: bool) -> ExportResult:
    tensors = CheckpointTensors(info)
    layers = LayerTensors(tensors)
    shape = read_shape(tensors, layers)
    resolved = resolve_phase(info, phase)
    step = resolve_step(info, step)
    run = run_progress(info, resolved, step, shape)
    source = tokenizer_source(info, tokenizer, shape)
    shards = plan_shards(hf_tensors(shape), parse_size(shard_size))
    producer = _Producer(tensors, layers, shape, [item for shard in shards for item in shard])
    with (staged_folder(out) as staging,
          tempfile.TemporaryDirectory(dir=staging.parent, prefix=f".{out.name}.tokenizer-") as side,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer") as background):
        # the tokenizer's export (which imports transformers to check its files) overlaps the weights'
        tokenizer_files = background.submit(export_tokenizer, source, Path(side) / "tokenizer")
        try:
            write_shards(staging, shards, producer, progress)
        finally:
            producer.close()
        config = hf_config(resolved, step, shape=shape, norm_eps=info.model_config.get("layernorm_epsilon", 1e-5),
                           init_std=info.model_config.get("init_method_std", 0.009), rope_scaling=rope_scaling_of(info))
        write_revision_files(staging, resolved, step, shape, run, config, tokenizer_files.result())
    return ExportResult(out, resolved, step, resolved.revision(step), shape, sum(map(len, shards)), len(shards))


def write_revision_files(staging: Path, phase: Phase, step: int, shape: LucieShape, run: RunProgress, config: dict,
                         tokenizer: str | Path) -> None:
    """Everything of an exported revision but its weights: config (with the run's progress), generation config,
    tokenizer and model card; then check the whole folder."""
    config = config | {"training_steps": run.cumulative_step, "training_tokens": run.cumulative_tokens}
    _write_json(staging / "config.json", config)
    _write_json(staging / "generation_config.json", {**GENERATION_CONFIG, "transformers_version": config["transformers_version"]})
    export_tokenizer(tokenizer, staging)
    (staging / "README.md").write_text(model_card(phase, step, shape, run), encoding="utf-8")
    check_folder(staging)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
