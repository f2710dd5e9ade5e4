"""DeepSpeed universal checkpoint -> the Megatron-Bridge checkpoint of a training run at its iteration N, written
one tensor at a time.

Megatron-Bridge alone holds the model and the distributed optimizer whole and gathers them again to save (about
370 GiB for Lucie-7B in one process). This import holds neither and writes no part of the format by hand, in
two steps:

1. a *template*: Megatron-Bridge builds the model, megatron-core's DistributedOptimizer and the LR scheduler from
   the phase's recipe (as ``lucie train`` builds them, bf16 weights with fp32 main parameters, one process on the
   CPU) for a model of the checkpoint's depth and vocabulary at a tiny width; the Adam step count is set through
   megatron-core's per-parameter API (``_set_main_param_and_optimizer_states``), the scheduler advanced to the
   consumed samples, and Bridge's ``save_checkpoint`` writes iteration N in the fully reshardable
   distributed-optimizer form: every key, chunk and dtype, the common state, the train state;
2. the checkpoint: the template's plan at the real widths (each chunk scaled with its tensor), written by
   torch.distributed.checkpoint's own writer, each tensor (weight, fp32 main parameter, ``exp_avg``,
   ``exp_avg_sq``) read from the universal checkpoint and re-packed only when it is written
   (converters/torch_dist_stream.py); ``run_config.yaml`` is Bridge's, of the phase's recipe at the real widths.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType
from tqdm import tqdm

from lucie_nemo import runtime

runtime.prepare()  # before Megatron is imported (import hook, quiet logs, CPU redirects)

from converters.layout import EMBEDDING, FINAL_NORM, LAYER_TENSORS, OUTPUT_LAYER, megatron_shape  # noqa: E402
from converters.torch_dist_stream import write_streamed  # noqa: E402
from converters.universal.checkpoint import OPTIMIZER_STATE, ZERO, UniversalCheckpoint, load_pickle  # noqa: E402
from converters.universal.facts import check_run_facts  # noqa: E402
from lucie_nemo.errors import UserError  # noqa: E402
from lucie_nemo.model import LucieShape, build_provider, use_local_layers  # noqa: E402
from lucie_nemo.phases import Phase  # noqa: E402
from lucie_nemo.schedule import PhaseSchedule  # noqa: E402


MODEL = "model"  # the weights' keys, beside the optimizer's "optimizer.state.<state>.<weight key>"
OPTIMIZER_PREFIX = "optimizer.state."
UNIVERSAL_STATE = {MODEL: "fp32", "param": "fp32", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
LAYERS_PREFIX = "decoder.layers."
_LAYER_SOURCE = {name: logical for logical, names in LAYER_TENSORS.items() for name in names}
_SOURCE_ORDER = [EMBEDDING, *LAYER_TENSORS, FINAL_NORM, OUTPUT_LAYER]  # the model's order, in which the writer reads
# The template's width: each attention head 4 wide, an FFN of 8 (its heads, query groups, depth and vocabulary are
# the checkpoint's, so its keys and chunks are the real checkpoint's).
_TEMPLATE_HEAD_DIM, _TEMPLATE_FFN = 4, 8


@dataclass(frozen=True)
class StateImportResult:
    out: Path
    shape: LucieShape
    phase: Phase
    iteration: int
    consumed_samples: int
    adam_step: int
    learning_rate: float  # the scheduler's LR after the consumed samples: the one step N+1 starts from
    num_parameters: int


def adam_step(checkpoint: UniversalCheckpoint) -> int:
    """The Adam step count of the run: ``step`` of ``zero/optimizer_state.pt``'s param groups when it is there
    (FusedAdam keeps it per group), else the iteration (bf16 training skips no step)."""
    path = checkpoint.folder / ZERO / OPTIMIZER_STATE
    groups = (load_pickle(path) or {}).get("param_groups") or []
    steps = {int(group["step"]) for group in groups if "step" in group}
    iteration = checkpoint.info.iteration
    if not steps:
        return iteration
    if len(steps) > 1 or not 0 < min(steps) <= iteration:
        raise UserError(f"{path}: Adam step {sorted(steps)} in its param groups, the checkpoint is iteration "
                        f"{iteration}: one step count between 1 and the iteration is needed")
    return steps.pop()


def _import_config(phase: Phase, shape: LucieShape, tiny: bool, out: Path):
    """The phase's recipe as ``lucie train`` builds it, for one process: TP = PP = CP = DP = 1, local layers
    (no Transformer Engine on the CPU), gloo, saving into ``out``. Weights in bf16 with fp32 main parameters
    and the distributed optimizer, as on the GPUs."""
    from lucie_nemo.leg_config import build_leg_config

    provider = build_provider(shape, phase)
    # the original layout's recipe: one leg over the whole phase (the checkpoint loads in any layout)
    cfg, _ = build_leg_config(phase.name, tiny=tiny, model=provider, **({} if tiny else {"layout": "original"}))
    model = use_local_layers(cfg.model, dtype=torch.bfloat16)
    model.tensor_model_parallel_size = model.pipeline_model_parallel_size = model.context_parallel_size = 1
    model.sequence_parallel = False
    model.recompute_granularity = None
    cfg.dist.distributed_backend = "gloo"
    cfg.ddp.overlap_grad_reduce = cfg.ddp.overlap_param_gather = cfg.optimizer.overlap_param_gather = False
    cfg.ddp.use_distributed_optimizer = cfg.optimizer.use_distributed_optimizer = True
    cfg.checkpoint.save = str(out)
    cfg.checkpoint.load = cfg.checkpoint.pretrained_checkpoint = None
    cfg.checkpoint.async_save = False
    cfg.checkpoint.save_rng = False  # the original run's RNG states are not Megatron-Core's: a resume draws anew
    cfg.checkpoint.dist_ckpt_optim_fully_reshardable = True
    cfg.logger.tensorboard_dir = None
    cfg.train.exit_interval = None
    return cfg


def _set_group_step(optimizer, step: int) -> None:
    """The step count of Transformer Engine's / Apex's FusedAdam, kept per param group (torch's Adam, the CPU
    fallback, keeps it per parameter: set with the parameter's state)."""
    for group in optimizer.optimizer.param_groups:
        if "step" in group:
            group["step"] = step


def _template_shape(shape: LucieShape) -> LucieShape:
    return replace(shape, hidden_size=shape.num_attention_heads * _TEMPLATE_HEAD_DIM, ffn_hidden_size=_TEMPLATE_FFN)


def _write_template(checkpoint: UniversalCheckpoint, phase: Phase, tiny: bool, out: Path, step: int,
                    consumed: int) -> tuple[Any, float]:
    """Bridge's checkpoint of the run at the checkpoint's iteration for a model of the template's width, its tensors
    arbitrary; (its configuration as the model's build left it, the LR step N+1 starts from)."""
    import megatron.bridge.training.checkpointing as checkpointing
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.optim import setup_optimizer
    from megatron.bridge.training.state import GlobalState
    from megatron.core.utils import unwrap_model as unwrap

    cfg = _import_config(phase, _template_shape(checkpoint.shape), tiny, out)
    runtime_config_update(cfg)
    model = cfg.model.provide_distributed_model(ddp_config=cfg.ddp, overlap_param_gather_with_optimizer_step=False)
    optimizer, scheduler = setup_optimizer(cfg.optimizer, cfg.scheduler, model,
                                           use_gloo_process_groups=cfg.dist.use_gloo_process_groups)
    distributed = getattr(optimizer, "chained_optimizers", [optimizer])  # one DistributedOptimizer per group kind
    for part in distributed:
        part._init_optimizer_states_with_dummy_values()  # allocates Adam's state
    owner = {p: part for part in distributed for p in part.model_param_group_index_map}
    for parameter in unwrap(model)[0].parameters():
        zeros = torch.zeros(parameter.numel())
        # the step is used where Adam keeps it per parameter (torch's Adam, the CPU fallback)
        owner[parameter]._set_main_param_and_optimizer_states(
            parameter, {"param": zeros, "exp_avg": zeros, "exp_avg_sq": zeros, "step": torch.tensor(float(step))})
    for part in distributed:
        _set_group_step(part, step)
    scheduler.step(increment=consumed)
    _check_scheduler(scheduler.state_dict(), checkpoint, phase)
    state = GlobalState()
    state.cfg = cfg
    state.train_state.step = checkpoint.info.iteration
    state.train_state.consumed_train_samples = consumed
    checkpointing.save_checkpoint(state, model, optimizer, scheduler, 0,
                                  checkpointing_context=checkpointing.init_checkpointing_context(cfg.checkpoint))
    return cfg, optimizer.param_groups[0]["lr"]


def _split_key(key: str) -> tuple[str, str]:
    """(MODEL or the optimizer state, the weight's key) of a checkpoint key."""
    if key.startswith(OPTIMIZER_PREFIX):
        state, _, weight = key[len(OPTIMIZER_PREFIX):].partition(".")
        return state, weight
    return MODEL, key


def _source(weight: str) -> tuple[str, bool]:
    """(Megatron source, stacked over the layers) of a weight's checkpoint key."""
    if weight.startswith(LAYERS_PREFIX) and weight[len(LAYERS_PREFIX):] in _LAYER_SOURCE:
        return _LAYER_SOURCE[weight[len(LAYERS_PREFIX):]], True
    if weight in (EMBEDDING, FINAL_NORM, OUTPUT_LAYER):
        return weight, False
    raise RuntimeError(f"Megatron-Bridge wrote a tensor {weight!r} that this importer does not know")


def _whole_shape(source: str, stacked: bool, shape: LucieShape) -> tuple[int, ...]:
    """The whole shape of tensor ``source`` in the checkpoint of a model of ``shape`` (layers stacked first)."""
    return (shape.num_layers, *megatron_shape(shape, source)) if stacked else megatron_shape(shape, source)


def scaled_plan(template: Metadata, template_shape: LucieShape, shape: LucieShape) -> list[WriteItem]:
    """The write items of the template's checkpoint at ``shape``'s widths: each chunk's offsets and sizes scaled
    with its tensor, every key, dtype and byte item kept; in the model's order, the states of a weight together
    (the writer reads each universal tensor once)."""
    items: list[tuple[tuple, WriteItem]] = []
    for key, stored in template.state_dict_metadata.items():
        if not isinstance(stored, TensorStorageMetadata):
            items.append(((-1,), WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO)))
            continue
        state, weight = _split_key(key)
        source, stacked = _source(weight)
        small, expected = tuple(stored.size), _whole_shape(source, stacked, template_shape)
        if small != expected:
            raise RuntimeError(f"Megatron-Bridge wrote {key} as {small}, this importer expects {expected}")
        size = _whole_shape(source, stacked, shape)
        for chunk in stored.chunks:
            offsets = tuple(o * s // t for o, s, t in zip(chunk.offsets, size, small))
            sizes = tuple(n * s // t for n, s, t in zip(chunk.sizes, size, small))
            if any(o * s % t or n * s % t for o, n, s, t in zip(chunk.offsets, chunk.sizes, size, small)) or \
                    (stacked and chunk.sizes[0] != 1):
                raise RuntimeError(f"Megatron-Bridge split {key} as {chunk}: not in proportion to its shape")
            order = (_SOURCE_ORDER.index(source), offsets[0] if stacked else 0, list(UNIVERSAL_STATE).index(state), offsets)
            data = TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
                                   properties=stored.properties, size=torch.Size(size))
            items.append((order, WriteItem(index=MetadataIndex(key, torch.Size(offsets)), type=WriteItemType.SHARD,
                                           tensor_data=data)))
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items]


class _Producer:
    """Each write item's data: the template's bytes, or a region of a tensor read from the universal checkpoint
    (the last one read is kept: a weight's states and chunks come one after the other)."""

    def __init__(self, checkpoint: UniversalCheckpoint, template: Path, template_metadata: Metadata, bar: tqdm):
        self.checkpoint, self.template, self.bar = checkpoint, template, bar
        self.stored = template_metadata.storage_data
        self.last: tuple[tuple, torch.Tensor] | None = None

    def __call__(self, item: WriteItem) -> torch.Tensor | io.BytesIO:
        if item.type == WriteItemType.BYTE_IO:
            where = self.stored[item.index]
            with open(self.template / where.relative_path, "rb") as file:
                file.seek(where.offset)
                return io.BytesIO(file.read(where.length))
        state, weight = _split_key(item.index.fqn)
        source, stacked = _source(weight)
        offsets, sizes = item.tensor_data.chunk.offsets, item.tensor_data.chunk.sizes
        wanted = (source, offsets[0] if stacked else None, UNIVERSAL_STATE[state])
        if self.last is None or self.last[0] != wanted:
            self.last = None  # the previous tensor is freed before the next one is read
            self.last = (wanted, self.checkpoint.megatron(*wanted))
        region = self.last[1].unsqueeze(0) if stacked else self.last[1]
        starts = (0, *offsets[1:]) if stacked else offsets
        for dim, (start, size) in enumerate(zip(starts, sizes)):
            region = region.narrow(dim, start, size)
        self.bar.update()
        return region.to(item.tensor_data.properties.dtype).contiguous()


def _check_written(folder: Path, items: list[WriteItem]) -> None:
    """The written checkpoint's metadata holds every planned item, each tensor at its planned shape."""
    written = FileSystemReader(str(folder)).read_metadata()
    for item in items:
        shape = written.state_dict_metadata.get(item.index.fqn)
        if item.index not in written.storage_data or (
                item.tensor_data is not None and tuple(shape.size) != tuple(item.tensor_data.size)):
            raise RuntimeError(f"{folder}: {item.index} was not written as planned")


def import_universal_state(folder: str | Path, out: str | Path, phase: str | None = None, tiny: bool = False,
                           progress: bool = True) -> StateImportResult:
    """Write universal checkpoint ``folder`` as the checkpoint of ``phase``'s run at its iteration, at ``out``
    (``tiny``: the checkpoint is of the scaled-down phase of ``lucie train --tiny``)."""
    from megatron.bridge.training.config import runtime_config_update

    from lucie_nemo.distributed import single_process_world
    from lucie_nemo.staging import staged_folder

    checkpoint = UniversalCheckpoint(folder)
    resolved = checkpoint.phase(phase, tiny=tiny)
    check_run_facts(checkpoint, resolved)
    iteration, step = checkpoint.info.iteration, adam_step(checkpoint)
    consumed = PhaseSchedule(resolved).consumed_samples(iteration)
    # Megatron and Bridge print their progress (parameter counts, "saving checkpoint ...") on stdout: the command
    # says what it wrote in one line, and a bad input is one error line.
    with contextlib.redirect_stdout(io.StringIO()), single_process_world(), staged_folder(out) as staging, \
            tempfile.TemporaryDirectory(prefix=".template-", dir=staging.parent) as scratch:
        template = Path(scratch)
        template_cfg, learning_rate = _write_template(checkpoint, resolved, tiny, template, step, consumed)
        name = f"iter_{iteration:07d}"
        (staging / name).mkdir()
        for file in [*template.glob("latest_*"), *(template / name).glob("*")]:  # all but the tensors
            if file.suffix != ".distcp" and file.name != ".metadata":
                shutil.copyfile(file, staging / file.relative_to(template))
        template_metadata = FileSystemReader(str(template / name)).read_metadata()
        items = scaled_plan(template_metadata, _template_shape(checkpoint.shape), checkpoint.shape)
        with tqdm(total=len(items), desc="tensors", unit="tensor", disable=not progress) as bar:
            write_streamed(staging / name, items, _Producer(checkpoint, template / name, template_metadata, bar))
        _check_written(staging / name, items)
        cfg = _import_config(resolved, checkpoint.shape, tiny, staging)
        runtime_config_update(cfg)
        cfg.ddp = template_cfg.ddp  # as the model's build left it (it resets the bucket size)
        cfg.to_yaml(str(staging / name / "run_config.yaml"))  # as Bridge's save_checkpoint writes it
    weights = {item.index.fqn: item.tensor_data.size for item in items
               if item.tensor_data is not None and _split_key(item.index.fqn)[0] == MODEL}
    count = sum(math.prod(size) for size in weights.values())
    return StateImportResult(Path(out), checkpoint.shape, resolved, iteration, consumed, step, learning_rate, count)


def _check_scheduler(built: dict, checkpoint: UniversalCheckpoint, phase: Phase) -> None:
    """The scheduler Bridge built from the recipe stands where the original run's stood."""
    original = checkpoint.info.lr_scheduler
    for key in ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style", "num_steps"):
        found, wanted = built[key], original.get(key, built[key])
        same = math.isclose(found, wanted, rel_tol=1e-12) if isinstance(wanted, float) else found == wanted
        if not same:
            raise UserError(f"the recipe's LR scheduler of phase {phase.name!r} has {key} {found!r}, the checkpoint's {wanted!r}")
