"""The three phases scaled down for one machine: same shapes of schedule, tiny sizes.

| fact                    | scale                                   |
|-------------------------|-----------------------------------------|
| sequence length         | / 16   (4,096 -> 256; 32,000 -> 2,000)  |
| global batch and rampup | / 64   (256 -> 1,024 becomes 4 -> 16)   |
| samples (train, warmup, | / 150,000 in phase 1, / 2,500 in phases |
|   rampup, decay)        |   2 and 3                               |
| save interval           | phase 1 every 50 steps, 2-3 every 10    |
| micro batch             | 1; one process, TP = PP = 1             |
| LR values (max and min) | x 30, same schedule shapes              |
| theta, weight decay     | unchanged                               |

The LR is raised because a 128-wide model trains stably at a much higher LR than a 4,096-wide one,
and the demo has a few hundred steps, not 750,000: at Lucie's 3e-4 the tiny model learns little
more than word frequencies in that budget.
"""

from __future__ import annotations

from dataclasses import replace

from lucie_nemo.phases import BatchRampup, ParallelLayout, Phase

SEQ_DIVISOR = 16
BATCH_DIVISOR = 64
SAMPLE_DIVISOR = {"pretrain": 150_000, "extension": 2_500, "anneal": 2_500}
SAVE_INTERVAL = {"pretrain": 50, "extension": 10, "anneal": 10}
LR_MULTIPLIER = 30


def _samples(count: int, phase: Phase) -> int:
    return max(1, count // SAMPLE_DIVISOR[phase.name])


def demo_phase(phase: Phase) -> Phase:
    """``phase`` scaled down for the tiny demo (see the table above)."""
    rampup = phase.rampup
    return replace(
        phase,
        train_samples=_samples(phase.train_samples, phase),
        seq_length=phase.seq_length // SEQ_DIVISOR,
        global_batch_size=phase.global_batch_size // BATCH_DIVISOR,
        micro_batch_size=1,
        rampup=BatchRampup(
            start=rampup.start // BATCH_DIVISOR,
            increment=max(1, rampup.increment // BATCH_DIVISOR),
            samples=_samples(rampup.samples, phase),
        ) if rampup else None,
        lr=replace(
            phase.lr,
            max_lr=phase.lr.max_lr * LR_MULTIPLIER,
            min_lr=phase.lr.min_lr * LR_MULTIPLIER,
            warmup_samples=_samples(phase.lr.warmup_samples, phase) if phase.lr.warmup_samples else 0,
            decay_samples=_samples(phase.lr.decay_samples, phase),
        ),
        save_interval=SAVE_INTERVAL[phase.name],
        original_layout=ParallelLayout(tensor_parallel=1, pipeline_parallel=1, nodes=1, gpus_per_node=1),
        published_steps=(),
    )



def demo_phases() -> dict[str, Phase]:
    from lucie_nemo.phases import PHASES

    return {name: demo_phase(phase) for name, phase in PHASES.items()}
