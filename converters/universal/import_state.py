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
   (converters/scaled_template.py); ``run_config.yaml`` is Bridge's, of the phase's recipe at the real widths.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lucie_nemo import runtime

runtime.prepare()  # before Megatron is imported (import hook, quiet logs, CPU redirects)

from converters.scaled_template import MODEL, fresh_template, split_key, template_shape, write_scaled  # noqa: E402
from converters.universal.checkpoint import OPTIMIZER_STATE, ZERO, UniversalCheckpoint, load_pickle  # noqa: E402
from converters.universal.facts import check_run_facts  # noqa: E402
from lucie_nemo.errors import UserError  # noqa: E402
from lucie_nemo.model import LucieShape, build_provider, use_local_layers  # noqa: E402
from lucie_nemo.phases import Phase  # noqa: E402
from lucie_nemo.schedule import PhaseSchedule  # noqa: E402


UNIVERSAL_STATE = {MODEL: "fp32", "param": "fp32", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


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


def _write_template(checkpoint: UniversalCheckpoint, phase: Phase, tiny: bool, out: Path, step: int,
                    consumed: int) -> tuple[Any, float]:
    """Bridge's checkpoint of the run at the checkpoint's iteration for a model of the template's width, its tensors
    arbitrary; (its configuration as the model's build left it, the LR step N+1 starts from)."""
    import megatron.bridge.training.checkpointing as checkpointing
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.optim import setup_optimizer
    from megatron.bridge.training.state import GlobalState
    from megatron.core.utils import unwrap_model as unwrap

    cfg = _import_config(phase, template_shape(checkpoint.shape), tiny, out)
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


def import_universal_state(folder: str | Path, out: str | Path, phase: str | None = None, tiny: bool = False,
                           progress: bool = True) -> StateImportResult:
    """Write universal checkpoint ``folder`` as the checkpoint of ``phase``'s run at its iteration, at ``out``
    (``tiny``: the checkpoint is of the scaled-down phase of ``lucie train --tiny``)."""
    from megatron.bridge.training.config import runtime_config_update

    from lucie_nemo.distributed import single_process_world
    from lucie_nemo.staging import resumable_folder

    checkpoint = UniversalCheckpoint(folder)
    resolved = checkpoint.phase(phase, tiny=tiny)
    check_run_facts(checkpoint, resolved)
    iteration, step = checkpoint.info.iteration, adam_step(checkpoint)
    consumed = PhaseSchedule(resolved).consumed_samples(iteration)
    # Megatron and Bridge print their progress (parameter counts, "saving checkpoint ...") on stdout: the command
    # says what it wrote in one line, and a bad input is one error line.
    manifest = {"import": "universal state", "source": str(checkpoint.folder.resolve()), "phase": resolved.name,
                "tiny": tiny}
    with contextlib.redirect_stdout(io.StringIO()), single_process_world(), resumable_folder(out, manifest) as work:
        template = fresh_template(work.state)
        template_cfg, learning_rate = _write_template(checkpoint, resolved, tiny, template, step, consumed)
        name = f"iter_{iteration:07d}"
        items = write_scaled(work.path, template, name, checkpoint.shape, checkpoint.megatron, UNIVERSAL_STATE,
                             work.state / "written", progress)
        cfg = _import_config(resolved, checkpoint.shape, tiny, work.path)
        runtime_config_update(cfg)
        cfg.ddp = template_cfg.ddp  # as the model's build left it (it resets the bucket size)
        cfg.to_yaml(str(work.path / name / "run_config.yaml"))  # as Bridge's save_checkpoint writes it
    weights = {item.index.fqn: item.tensor_data.size for item in items
               if item.tensor_data is not None and split_key(item.index.fqn)[0] == MODEL}
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
