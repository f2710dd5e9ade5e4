"""Megatron's sample accounting of the three phases, pinned and checked against megatron-core."""

from __future__ import annotations

import math

import pytest

from lucie_nemo.phases import ANNEAL, EXTENSION, PHASES, PRETRAIN
from lucie_nemo.schedule import PhaseSchedule, lr_at, rampup_thresholds

P1, P2, P3 = PhaseSchedule(PRETRAIN), PhaseSchedule(EXTENSION), PhaseSchedule(ANNEAL)


def test_phase_facts():
    assert (PRETRAIN.train_samples, EXTENSION.train_samples, ANNEAL.train_samples) == (762_144_586, 156_250, 156_250)
    assert (PRETRAIN.seq_length, EXTENSION.seq_length, ANNEAL.seq_length) == (4_096, 32_000, 32_000)
    assert (PRETRAIN.rotary_base, EXTENSION.rotary_base, ANNEAL.rotary_base) == (500_000, 20_000_000, 20_000_000)
    assert (PRETRAIN.global_batch_size, EXTENSION.global_batch_size, ANNEAL.global_batch_size) == (1_024, 128, 128)
    assert (PRETRAIN.micro_batch_size, EXTENSION.micro_batch_size, ANNEAL.micro_batch_size) == (2, 4, 4)
    assert (PRETRAIN.rampup.start, PRETRAIN.rampup.increment, PRETRAIN.rampup.samples) == (256, 64, 10_000_000)
    assert (PRETRAIN.save_interval, EXTENSION.save_interval, ANNEAL.save_interval) == (5_000, 250, 500)
    assert (PRETRAIN.starts_from, EXTENSION.starts_from, ANNEAL.starts_from) == (None, "pretrain", "extension")
    assert PRETRAIN.seed == 42
    for phase in PHASES.values():
        opt = phase.optimizer
        assert (opt.weight_decay, opt.clip_grad, opt.adam_beta1, opt.adam_beta2, opt.adam_eps) == (0.1, 1.0, 0.9, 0.95, 1e-5)
        layout = phase.original_layout
        assert (layout.tensor_parallel, layout.pipeline_parallel, layout.gpus_per_node) == (4, 4, 4)
    assert (PRETRAIN.original_layout.world_size, PRETRAIN.original_layout.data_parallel) == (512, 32)
    assert (EXTENSION.original_layout.world_size, EXTENSION.original_layout.data_parallel) == (128, 8)


def test_train_iterations():
    assert (P1.train_iters, P2.train_iters, P3.train_iters) == (753_851, 1_220, 1_220)


def test_batch_at_rampup_boundaries():
    assert P1.global_batch_size(1) == 256
    # 833,333.3 samples per increment: the batch of 320 starts once 833,334 samples are consumed.
    last_256 = P1.step_for_consumed(833_334)
    assert (P1.global_batch_size(last_256), P1.global_batch_size(last_256 + 1)) == (256, 320)
    assert P1.consumed_samples(last_256) == 833_536
    assert P1.global_batch_size(19_336) == 960  # the iteration that crosses 10M samples
    assert P1.consumed_samples(19_335) == 9_999_744 and P1.consumed_samples(19_336) == 10_000_704
    assert P1.global_batch_size(19_337) == 1_024
    assert P1.rampup_iters == 19_336
    assert P1.consumed_samples(753_851) == 762_144_064  # the partial last batch (522 samples) is dropped
    assert P2.global_batch_size(1) == P2.global_batch_size(1_220) == 128
    assert P2.consumed_samples(1_220) == 156_160


def test_rampup_thresholds_reproduce_megatron_rampup_formula():
    thresholds = rampup_thresholds(256, 64, 10_000_000, 1_024)
    assert thresholds[0] == (0, 256) and thresholds[-1] == (10_000_000, 1_024) and len(thresholds) == 13
    per_increment = 10_000_000 / 12
    for consumed, batch in thresholds[1:]:
        assert 256 + 64 * int(consumed / per_increment) == batch
        assert 256 + 64 * int((consumed - 1) / per_increment) == batch - 64


def test_megatron_core_step_calculator_follows_the_rampup(megatron_runtime):
    from megatron.core.num_microbatches_calculator import StepBatchsizeNumMicroBatchesCalculator

    schedule = " ".join(f"{c}:{b}" for c, b in rampup_thresholds(256, 64, 10_000_000, 1_024))
    calculator = StepBatchsizeNumMicroBatchesCalculator(2, 32, False, 1, schedule)
    for step in list(range(1, 40)) + list(range(3_200, 3_300)) + list(range(19_300, 19_400)):
        calculator.update(P1.consumed_samples(step - 1), consistency_check=True)
        assert calculator.get_current_global_batch_size() == P1.global_batch_size(step), step


def test_lr_values():
    assert P1.lr(0) == 0.0
    assert P1.lr(1) == pytest.approx(3e-4 * 256 / 2_000_000, rel=1e-12)
    end_of_warmup = P1.step_for_consumed(2_000_000)
    assert P1.consumed_samples(end_of_warmup - 1) < 2_000_000 <= P1.consumed_samples(end_of_warmup)
    assert P1.lr(end_of_warmup - 1) < 3e-4 and P1.lr(end_of_warmup) == pytest.approx(3e-4, rel=1e-6)
    middle = P1.step_for_consumed((2_000_000 + 762_144_586) // 2)
    assert P1.lr(middle) == pytest.approx(1.65e-4, rel=1e-5)  # half-way through the cosine
    assert P1.lr(753_851) == pytest.approx(3e-5, rel=1e-9)
    assert P2.lr(0) == P2.lr(610) == P2.lr(1_220) == 2e-5
    assert P3.lr(0) == 3e-5
    assert P3.lr(610) == pytest.approx(3e-5 * (1 - 78_080 / 156_250), rel=1e-12)
    assert P3.lr(1_220) == pytest.approx(3e-5 * (1 - 156_160 / 156_250), rel=1e-12)


def test_lr_matches_megatron_core_scheduler_stepped_by_real_batches(megatron_runtime):
    """The same LR as megatron-core's OptimizerParamScheduler advanced by each iteration's batch."""
    import torch
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    for plan, steps in ((P1, 25_000), (P3, 1_220), (P2, 1_220)):
        lr = plan.phase.lr
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr.max_lr)
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=lr.max_lr, min_lr=lr.min_lr,
            lr_warmup_steps=lr.warmup_samples, lr_decay_steps=lr.decay_samples,
            lr_decay_style=lr.style, start_wd=0.1, end_wd=0.1, wd_incr_steps=plan.phase.train_samples,
            wd_incr_style="constant",
        )
        for step in range(1, steps + 1):
            scheduler.step(increment=plan.global_batch_size(step))
            if step % 97 == 0 or step in (1, steps):
                assert optimizer.param_groups[0]["lr"] == pytest.approx(plan.lr(step), rel=1e-12, abs=1e-18)


def test_cumulative_steps_and_tokens():
    phase1_tokens = 762_144_064 * 4_096
    assert P1.record(753_851).cumulative_tokens == phase1_tokens == 3_121_742_086_144
    record = P2.record(250)
    assert (record.cumulative_step, record.cumulative_tokens) == (753_851 + 250, phase1_tokens + 250 * 128 * 32_000)
    assert P3.record(1_220).cumulative_step == 753_851 + 1_220 + 1_220


def test_published_revisions_are_exact():
    names = [PRETRAIN.revision(step) for step in P1.revision_steps()]
    expected = [f"step{s:07d}" for s in (5_000, 10_000, 15_000, 20_000)]
    expected += [f"step{s:07d}" for s in range(25_000, 750_001, 25_000)] + ["step0753851"]
    assert names == expected and len(names) == 35
    assert [EXTENSION.revision(s) for s in P2.revision_steps()] == [
        "extension_step0000250", "extension_step0000500", "extension_step0000750",
        "extension_step0001000", "extension_step0001220",
    ]


def test_saves_cover_every_published_revision():
    for plan in (P1, P2):
        assert set(plan.phase.published_steps) <= set(plan.save_steps())
    assert P3.save_steps() == [500, 1_000, 1_220]


def test_lr_at_is_megatron_get_lr_shape():
    cosine = PRETRAIN.lr
    quarter = cosine.warmup_samples + (cosine.decay_samples - cosine.warmup_samples) // 4
    expected = 3e-5 + 0.5 * (math.cos(math.pi * (quarter - 2e6) / (cosine.decay_samples - 2e6)) + 1) * 2.7e-4
    assert lr_at(cosine, quarter) == pytest.approx(expected, rel=1e-12)
    assert lr_at(cosine, cosine.decay_samples + 1) == 3e-5
