"""The Lucie-7B recipe mechanism: a phase's facts -> a Megatron-Bridge ConfigContainer.

recipes/ declares the phases with this; everything that computes (layout, rampup,
sample-based scheduler, precision, recompute) is here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig
from megatron.bridge.training.config import (
    CheckpointConfig,
    DistributedInitConfig,
    GPTDatasetConfig,
    LoggerConfig,
    MockGPTDatasetConfig,
    RNGConfig,
    SchedulerConfig,
    TokenizerConfig,
    TrainingConfig,
    ValidationConfig,
)

from lucie_nemo.errors import UserError
from lucie_nemo.model import LucieModelProvider, lucie_7b
from lucie_nemo.phases import ParallelLayout, Phase
from lucie_nemo.plan import original_recompute
from lucie_nemo.schedule import PhaseSchedule
from lucie_nemo.training import SampleSchedule, SampleScheduledConfigContainer

if TYPE_CHECKING:
    from lucie_nemo.plan import LayoutChoice, Leg

Precision = Literal["bf16", "fp8"]
INDEX_CACHE = "index-cache"  # folder of the datasets' sample indices, under the data root

# Megatron-Bridge mixed-precision presets. FP8 on Hopper: per-tensor *current* scaling
# ("tensorwise"): no amax history to tune or to go stale after a data or LR change, the
# recipe NVIDIA recommends for Hopper pre-training stability; MXFP8 needs Blackwell,
# delayed scaling is the older, less robust default.
PRECISION_PRESETS: dict[str, str] = {
    "bf16": "bf16_mixed",
    "fp8": "bf16_with_fp8_current_scaling_mixed",
}


# Process settings of NVIDIA's H100 Llama-3-8B recipes (perf_recipes/llama/h100/llama3.py); Megatron-Bridge
# sets them (unless already set) before it initialises. Left out: NCCL_NVLS_ENABLE and
# NCCL_GRAPH_REGISTER (tuned to DGX H100 NVSwitch systems), cuDNN LayerNorm switches (an FP8 benchmark choice).
TUNED_ENVIRONMENT: dict[str, str] = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # order TP/SP communication before compute kernels
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "TORCH_NCCL_HIGH_PRIORITY": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",  # less fragmentation
    "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",  # leave SMs to overlapped communication
    "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",
}


def original_layout(phase: Phase, nodes: int | None = None, gpus_per_node: int | None = None) -> ParallelLayout:
    """The phase's original TP/PP, on ``nodes`` nodes (default: the original node count)."""
    layout = phase.original_layout
    return replace(layout, nodes=nodes or layout.nodes, gpus_per_node=gpus_per_node or layout.gpus_per_node)


@dataclass(frozen=True)
class RunPaths:
    """Where a phase run reads data and writes checkpoints and logs."""

    output_dir: Path
    data_root: Path | None = None  # None: Megatron's mock data (smoke tests)
    blend_file: Path | None = None  # None: the phase's original Lucie blend
    initial_checkpoint: str | None = None  # weights-only start (phases 2 and 3)

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.output_dir / "tensorboard"


def _recompute(provider: LucieModelProvider, setting: str) -> None:
    if setting == "full":
        provider.recompute_granularity = "full"
        provider.recompute_method = "uniform"
        provider.recompute_num_layers = 1


def _dataset(phase: Phase, provider: LucieModelProvider, paths: RunPaths):
    common = dict(
        random_seed=phase.seed,
        seq_length=provider.seq_length,
        reset_attention_mask=False,
        reset_position_ids=False,
        eod_mask_loss=False,
        num_dataset_builder_threads=1,
        split="100,0,0",  # no validation split: the phases run without evaluation (as eval_iters=0)
        data_sharding=True,
        dataloader_type="single",
        skip_getting_attention_mask_from_dataset=True,
    )
    if paths.data_root is None:
        return MockGPTDatasetConfig(**common)
    from lucie_nemo.data.blends import phase_blend, validate_blend

    blend = phase_blend(phase.blend, paths.data_root, paths.blend_file)
    validate_blend(blend)
    # one index cache beside the datasets, as the original run's --data-cache-path: the first rank builds the
    # blend's index (766M slots in phase 1), the others and later runs load it
    config = GPTDatasetConfig(blend=blend.to_megatron(), path_to_cache=str(paths.data_root / INDEX_CACHE), **common)
    if phase.data_order == "megatron":
        return config
    from lucie_nemo.data.order_config import OriginalOrderDatasetConfig

    return OriginalOrderDatasetConfig.wrapping(config, phase.train_samples)


def build_config(
    phase: Phase,
    layout: ParallelLayout,
    paths: RunPaths,
    *,
    model: LucieModelProvider | None = None,
    precision: Precision = "bf16",
    fp8_bf16_first_last_layers: bool = True,
    micro_batch_size: int | None = None,
    recompute: str | None = None,
) -> SampleScheduledConfigContainer:
    """A full Megatron-Bridge training config for ``phase`` on ``layout`` (micro-batch and recompute:
    the phase's original ones unless given)."""
    if precision not in PRECISION_PRESETS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISION_PRESETS)}")
    provider = model or lucie_7b(phase)
    provider.seq_length = phase.seq_length
    provider.rotary_base = phase.rotary_base
    provider.tensor_model_parallel_size = layout.tensor_parallel
    provider.pipeline_model_parallel_size = layout.pipeline_parallel
    provider.context_parallel_size = layout.context_parallel
    provider.sequence_parallel = layout.tensor_parallel > 1
    # NVIDIA's Llama-3-8B recipe (recipes/llama/h100/llama3.py) fuses the cross-entropy; with Megatron's
    # own kernel: megatron-core warns that the Transformer Engine one ("te") has known stability issues.
    provider.cross_entropy_loss_fusion = True
    micro_batch_size = micro_batch_size or phase.micro_batch_size
    _recompute(provider, recompute or original_recompute(phase.seq_length, micro_batch_size))

    schedule = PhaseSchedule(phase)
    rampup = phase.rampup
    optimizer = phase.optimizer
    lr = phase.lr

    mixed_precision = PRECISION_PRESETS[precision]
    if precision == "fp8":
        from megatron.bridge.training.mixed_precision import get_mixed_precision_config

        mixed_precision = get_mixed_precision_config(mixed_precision)
        mixed_precision.first_last_layers_bf16 = fp8_bf16_first_last_layers

    return SampleScheduledConfigContainer(
        model=provider,
        train=TrainingConfig(
            train_iters=schedule.train_iters,
            global_batch_size=phase.global_batch_size,
            micro_batch_size=micro_batch_size,
            rampup_batch_size=[rampup.start, rampup.increment, rampup.samples] if rampup else None,
            manual_gc=True,  # NVIDIA's recipes: collect garbage every 100 steps on all ranks at once
            manual_gc_interval=100,
            exit_signal_handler=True,
        ),
        sample_schedule=SampleSchedule(
            warmup_samples=lr.warmup_samples, decay_samples=lr.decay_samples, train_samples=phase.train_samples
        ),
        validation=ValidationConfig(eval_interval=None, eval_iters=0),
        optimizer=OptimizerConfig(
            optimizer="adam",
            lr=lr.max_lr,
            min_lr=lr.min_lr,
            weight_decay=optimizer.weight_decay,
            adam_beta1=optimizer.adam_beta1,
            adam_beta2=optimizer.adam_beta2,
            adam_eps=optimizer.adam_eps,
            clip_grad=optimizer.clip_grad,
            bf16=True,
            use_distributed_optimizer=True,
            overlap_param_gather=True,
        ),
        scheduler=SchedulerConfig(
            lr_decay_style=lr.style,
            lr_warmup_iters=0,
            lr_warmup_init=0.0,
            start_weight_decay=optimizer.weight_decay,
            end_weight_decay=optimizer.weight_decay,
            weight_decay_incr_style="constant",
        ),
        ddp=DistributedDataParallelConfig(
            use_distributed_optimizer=True,
            grad_reduce_in_fp32=True,  # as NVIDIA's pre-training recipe (its benchmarks reduce in bf16: left out)
            overlap_grad_reduce=True,
            overlap_param_gather=True,
            average_in_collective=True,
            check_for_nan_in_grad=True,  # NVIDIA's benchmarks turn it off; a 750k-step run keeps it
            bucket_size=128 * 1024 * 1024,  # Megatron-Bridge's comm-overlap default for DP > 1 (comm_overlap.py)
        ),
        dataset=_dataset(phase, provider, paths),
        logger=LoggerConfig(
            log_interval=1 if schedule.train_iters < 1_000 else 10,
            tensorboard_dir=str(paths.tensorboard),
            log_timers_to_tensorboard=True,
        ),
        # Training reads pre-tokenised data; the vocabulary size is all the trainer needs.
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=provider.vocab_size),
        checkpoint=CheckpointConfig(
            save=str(paths.checkpoints),
            load=str(paths.checkpoints),
            save_interval=phase.save_interval,
            pretrained_checkpoint=paths.initial_checkpoint,
            ckpt_format="torch_dist",
            fully_parallel_save=True,
            # The distributed optimizer's state saved per parameter, independent of TP/PP/DP: a checkpoint
            # of one layout loads in another (a plan's second leg, another allocation).
            dist_ckpt_optim_fully_reshardable=True,
            most_recent_k=-1,
        ),
        rng=RNGConfig(seed=phase.seed),
        dist=DistributedInitConfig(),
        mixed_precision=mixed_precision,
        env_vars=dict(TUNED_ENVIRONMENT),
    )


def phase_recipe(
    phase: Phase,
    *,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    precision: Precision = "bf16",
    output_root: str | os.PathLike = "runs",
    data_root: str | os.PathLike | None = None,
    blend_file: str | os.PathLike | None = None,
    initial_checkpoint: str | None = None,
    model: LucieModelProvider | None = None,
    layout: "LayoutChoice | None" = None,
) -> SampleScheduledConfigContainer:
    """The base Lucie-7B recipe applied to ``phase``: the phase's original layout on ``nodes``
    nodes, outputs under ``output_root/<phase>``, the phase's blend (``blend_file`` for another) of
    datasets under ``data_root`` (mock data without one), and, for phases 2 and 3, the weights of the
    previous phase's last checkpoint (``output_root/<previous>/checkpoints``) unless
    ``initial_checkpoint`` names another (a torch_dist checkpoint or a Hugging Face folder).
    ``layout`` (from lucie_nemo.plan) replaces the original TP/PP/CP, micro-batch and recompute."""
    root = Path(output_root)
    if phase.starts_from and initial_checkpoint is None:
        initial_checkpoint = str(RunPaths(root / phase.starts_from).checkpoints)
    paths = RunPaths(
        output_dir=root / phase.name,
        data_root=Path(data_root) if data_root is not None else None,
        blend_file=Path(blend_file) if blend_file is not None else None,
        initial_checkpoint=initial_checkpoint,
    )
    parallel = original_layout(phase, nodes, gpus_per_node)
    if layout is None:
        return build_config(phase, parallel, paths, model=model, precision=precision)
    parallel = replace(parallel, tensor_parallel=layout.tensor_parallel, pipeline_parallel=layout.pipeline_parallel,
                       context_parallel=layout.context_parallel)
    return build_config(phase, parallel, paths, model=model, precision=precision,
                        micro_batch_size=layout.micro_batch_size, recompute=layout.recompute)


def leg_recipe(phase: Phase, leg: "Leg", **options) -> tuple[SampleScheduledConfigContainer, list[int]]:
    """The recipe of one leg of a plan (lucie_nemo.plan), and the global batches its steps use.

    Every leg keeps the whole phase's config (iterations, rampup, data), so that the data order and
    the LR are those of a single run; a leg that ends before the phase saves and exits at its last
    step (``train.exit_interval``), and the next leg resumes from that checkpoint in its own layout."""
    from lucie_nemo.plan import batch_sizes_from

    cfg = phase_recipe(phase, layout=leg.candidate.choice, **options)
    if leg.to_step < cfg.train.train_iters:
        cfg.train.exit_interval = leg.to_step
    return cfg, batch_sizes_from(phase, leg.from_step)
