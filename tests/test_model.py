"""The Lucie-7B architecture on megatron-core: every fact pinned, tiny model runs and checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lucie_nemo.model import LUCIE_7B, TINY, lucie_7b, lucie_tiny, use_local_layers
from lucie_nemo.phases import ANNEAL, EXTENSION, PRETRAIN


def test_full_model_architecture_fields_are_lucie(megatron_runtime):
    provider = lucie_7b()
    expected = {
        "num_layers": 32,
        "hidden_size": 4096,
        "ffn_hidden_size": 12288,
        "num_attention_heads": 32,
        "num_query_groups": 8,
        "kv_channels": 128,
        "vocab_size": 65024,
        "normalization": "RMSNorm",
        "layernorm_epsilon": 1e-5,
        "gated_linear_unit": True,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "share_embeddings_and_output_weights": False,
        "position_embedding_type": "rope",
        "rotary_percent": 1.0,
        "rope_scaling": False,
        "init_method_std": 0.009,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "should_pad_vocab": False,
        "seq_length": 4096,
        "rotary_base": 500_000,
        "bf16": True,
        "params_dtype": torch.bfloat16,
    }
    assert {name: getattr(provider, name) for name in expected} == expected
    assert provider.activation_func is F.silu
    assert provider.vocab_size % (128 * 4) == 0  # no padding needed up to TP 4


def test_phase_sets_context_and_theta(megatron_runtime):
    assert (lucie_7b(PRETRAIN).seq_length, lucie_7b(PRETRAIN).rotary_base) == (4096, 500_000)
    assert (lucie_7b(EXTENSION).seq_length, lucie_7b(EXTENSION).rotary_base) == (32_000, 20_000_000)
    assert (lucie_7b(ANNEAL).seq_length, lucie_7b(ANNEAL).rotary_base) == (32_000, 20_000_000)


def test_parameter_count_on_meta_device_is_exact(megatron_runtime):
    from lucie_nemo.model_info import count_parameters

    report = count_parameters(lucie_7b())
    assert report.parameters == 6_706_958_336
    assert report.components == {
        "embedding": 65024 * 4096,
        "output_layer": 65024 * 4096,
        "attention": 32 * (4096 * (4096 + 2 * 1024) + 4096 * 4096),
        "mlp": 32 * 3 * 4096 * 12288,
        "norms": 32 * 2 * 4096 + 4096,
    }


def test_tiny_shares_rules_with_small_sizes(megatron_runtime):
    tiny = lucie_tiny(vocab_size=512)
    assert (tiny.num_layers, tiny.hidden_size, tiny.vocab_size) == (TINY.num_layers, TINY.hidden_size, 512)
    for rule in ("normalization", "gated_linear_unit", "add_bias_linear", "share_embeddings_and_output_weights",
                 "rope_scaling", "init_method_std", "layernorm_epsilon"):
        assert getattr(tiny, rule) == getattr(lucie_7b(), rule)
    assert TINY.hidden_size // TINY.num_attention_heads == TINY.head_dim
    assert LUCIE_7B.head_dim == 128


def _tiny_model():
    from lucie_nemo.distributed import attach_process_groups

    provider = use_local_layers(lucie_tiny(vocab_size=512))
    provider.seq_length = 32
    attach_process_groups(provider)
    provider.finalize()
    return provider.provide()


def test_tiny_forward_and_backward_through_megatron_core(world):
    model = _tiny_model()
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).expand(2, -1)
    loss = model(tokens, positions, attention_mask=None, labels=tokens)
    assert loss.shape == (2, 32)
    assert 5.5 < loss.float().mean().item() < 7.0  # about ln(512) = 6.24 at init
    loss.float().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.decoder.layers[0].mlp.linear_fc1.weight.grad.abs().sum() > 0


def test_torch_dist_checkpoint_round_trip_is_bit_exact(world, tmp_path):
    from megatron.core import dist_checkpointing

    model = _tiny_model()
    reference = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                 if isinstance(tensor, torch.Tensor)}
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(tmp_path))
    model.load_state_dict(loaded)
    restored = model.state_dict()
    assert reference.keys() <= restored.keys()
    for name, tensor in reference.items():
        assert torch.equal(restored[name], tensor), name
