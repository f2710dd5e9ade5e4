"""The three phase recipes: fields, layouts, validation on the original cluster sizes, bad overrides."""

from __future__ import annotations

import pytest

from lucie_nemo.errors import UserError


@pytest.fixture(scope="module")
def recipes(megatron_runtime):
    import recipes as recipe_module

    return recipe_module.RECIPES


@pytest.mark.parametrize(("nodes", "dp"), [(128, 32), (32, 8)])
def test_pretrain_validates_on_original_cluster_sizes(recipes, nodes, dp):
    from lucie_nemo.validation import validate_config

    validated = validate_config(recipes["pretrain"](nodes=nodes), nodes * 4)
    model = validated.model
    assert (model.tensor_model_parallel_size, model.pipeline_model_parallel_size, validated.data_parallel_size) == (4, 4, dp)
    assert validated.train.train_iters == 753_851
    assert (validated.scheduler.lr_warmup_steps, validated.scheduler.lr_decay_steps) == (2_000_000, 762_144_586)
    assert validated.scheduler.wd_incr_steps == 762_144_586


@pytest.mark.parametrize("phase", ["extension", "anneal"])
def test_long_context_phases_validate_on_32_nodes(recipes, phase):
    from lucie_nemo.validation import validate_config

    validated = validate_config(recipes[phase](nodes=32), 128)
    assert validated.data_parallel_size == 8
    assert validated.train.train_iters == 1_220
    assert (validated.scheduler.lr_warmup_steps, validated.scheduler.lr_decay_steps) == (0, 156_250)


def test_recipe_fields_of_each_phase(recipes):
    p1, p2, p3 = (recipes[name](output_root="/ckpt") for name in ("pretrain", "extension", "anneal"))
    assert (p1.model.seq_length, p1.model.rotary_base) == (4_096, 500_000)
    assert (p2.model.seq_length, p2.model.rotary_base) == (32_000, 20_000_000)
    assert (p3.model.seq_length, p3.model.rotary_base) == (32_000, 20_000_000)
    assert p1.train.rampup_batch_size == [256, 64, 10_000_000]
    assert (p1.train.global_batch_size, p1.train.micro_batch_size) == (1_024, 2)
    assert (p2.train.global_batch_size, p2.train.micro_batch_size, p2.train.rampup_batch_size) == (128, 4, None)
    assert (p1.optimizer.lr, p1.optimizer.min_lr, p1.scheduler.lr_decay_style) == (3e-4, 3e-5, "cosine")
    assert (p2.optimizer.lr, p2.scheduler.lr_decay_style) == (2e-5, "constant")
    assert (p3.optimizer.lr, p3.optimizer.min_lr, p3.scheduler.lr_decay_style) == (3e-5, 0.0, "linear")
    for cfg in (p1, p2, p3):
        opt = cfg.optimizer
        assert (opt.weight_decay, opt.clip_grad, opt.adam_beta1, opt.adam_beta2, opt.adam_eps) == (0.1, 1.0, 0.9, 0.95, 1e-5)
        assert opt.use_distributed_optimizer and cfg.ddp.use_distributed_optimizer
        assert cfg.rng.seed == 42 and cfg.mixed_precision == "bf16_mixed"
        assert cfg.checkpoint.ckpt_format == "torch_dist"
    assert (p1.checkpoint.save_interval, p2.checkpoint.save_interval, p3.checkpoint.save_interval) == (5_000, 250, 500)
    assert p1.checkpoint.pretrained_checkpoint is None
    assert p2.checkpoint.pretrained_checkpoint == "/ckpt/pretrain/checkpoints"
    assert p3.checkpoint.pretrained_checkpoint == "/ckpt/extension/checkpoints"
    assert p2.checkpoint.save == p2.checkpoint.load == "/ckpt/extension/checkpoints"
    assert p1.model.recompute_granularity is None
    assert (p2.model.recompute_granularity, p2.model.recompute_method, p2.model.recompute_num_layers) == ("full", "uniform", 1)


def test_fp8_uses_hopper_current_scaling_with_bf16_edges(recipes):
    from lucie_nemo.validation import validate_config

    validated = validate_config(recipes["pretrain"](precision="fp8"), 512)
    assert (validated.model.fp8, validated.model.fp8_recipe) == ("hybrid", "tensorwise")
    assert validated.model.first_last_layers_bf16 is True
    assert recipes["pretrain"](precision="fp8", ).mixed_precision.first_last_layers_bf16 is True


def test_bad_global_batch_names_field_and_constraint(recipes):
    from lucie_nemo.validation import validate_config

    cfg = recipes["pretrain"]()
    cfg.train.global_batch_size = 1_000
    with pytest.raises(UserError, match=r"train.global_batch_size: batch 1000 is not divisible by "
                                        r"train.micro_batch_size x DP = 2 x 32 = 64"):
        validate_config(cfg, 512)


def test_node_count_that_breaks_the_layout(recipes):
    from lucie_nemo.validation import validate_config

    with pytest.raises(UserError, match="world size 24 is not divisible by TP x PP x CP = 4 x 4 x 1"):
        validate_config(recipes["extension"](nodes=6), 24)


def test_context_parallel_needs_divisible_sequence(recipes):
    from lucie_nemo.validation import check_layout

    cfg = recipes["extension"]()
    cfg.model.context_parallel_size = 2
    check_layout(cfg, 256)  # 32,000 is divisible by 4
    cfg.model.seq_length = 32_002
    with pytest.raises(UserError, match="model.seq_length 32002 is not divisible by 2 x CP = 4"):
        check_layout(cfg, 256)


def test_vocab_must_split_over_tp(recipes):
    from lucie_nemo.validation import check_layout

    cfg = recipes["pretrain"]()
    cfg.model.tensor_model_parallel_size = 3
    cfg.model.pipeline_model_parallel_size = 1
    with pytest.raises(UserError, match="model.vocab_size 65024 is not divisible by TP 3"):
        check_layout(cfg, 3)


def test_rampup_stage_that_breaks_the_layout_is_named(recipes):
    """Micro 2 x DP 64 = 128 divides the final batch 1,024 but not the rampup stage 256 + 64 = 320."""
    from lucie_nemo.validation import validate_config

    cfg = recipes["pretrain"](nodes=256)
    assert cfg.train.global_batch_size % 128 == 0
    with pytest.raises(UserError, match=r"train.global_batch_size: batch 320 is not divisible by "
                                        r"train.micro_batch_size x DP = 2 x 64 = 128"):
        validate_config(cfg, 1_024)


@pytest.mark.parametrize(("tp", "pp", "message"), [
    (4, 3, "model.num_layers 32 is not divisible by PP 3"),
    (64, 1, "model.num_attention_heads 32 is not divisible by TP 64"),
    (16, 1, "model.num_query_groups 8 is not divisible by TP 16"),
])
def test_layers_and_heads_must_split_over_the_layout(recipes, tp, pp, message):
    from lucie_nemo.validation import validate_config

    cfg = recipes["pretrain"]()
    cfg.model.tensor_model_parallel_size, cfg.model.pipeline_model_parallel_size = tp, pp
    with pytest.raises(UserError, match=message):
        validate_config(cfg, tp * pp * 32)
