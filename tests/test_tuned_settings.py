"""NVIDIA's tuned Llama-3-8B settings that the recipes take, and the fidelity settings they keep."""

from __future__ import annotations


def test_recipe_carries_nvidia_tuned_settings_and_keeps_fidelity(megatron_runtime):
    import recipes
    from lucie_nemo.validation import validate_config

    cfg = recipes.RECIPES["pretrain"]()
    assert cfg.model.cross_entropy_loss_fusion and cfg.model.cross_entropy_fusion_impl == "native"
    assert cfg.ddp.bucket_size == 128 * 1024 * 1024
    assert cfg.ddp.overlap_grad_reduce and cfg.ddp.overlap_param_gather and cfg.ddp.use_distributed_optimizer
    assert (cfg.train.manual_gc, cfg.train.manual_gc_interval) == (True, 100)
    assert cfg.env_vars["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert cfg.env_vars["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    # Kept for fidelity and safety: clipping 1.0, fp32 gradient reduction, NaN checks.
    assert (cfg.optimizer.clip_grad, cfg.ddp.grad_reduce_in_fp32, cfg.ddp.check_for_nan_in_grad) == (1.0, True, True)
    validated = validate_config(cfg, 512)
    assert validated.ddp.bucket_size == 128 * 1024 * 1024
