"""lucie_nemo.torch_adam: megatron-core's DistributedOptimizer over torch's Adam (no Transformer Engine, no Apex).

Its checkpoint fixes were first needed on the CPU (lucie_nemo.cpu_support includes them, and the CPU resume
tests exercise them); an H200 node without Transformer Engine then failed the same way on resume
(bench/results/gpu_check-h200-2026-12-04-run1.log), and passed with them (tests/test_gpu.py, run2). Here: the
GPU wiring, with CUDA's presence faked.
"""

from __future__ import annotations

import torch

from lucie_nemo import runtime, torch_adam


def test_on_a_cpu_the_cpu_redirects_carry_the_fixes_and_activate_does_nothing():
    runtime.prepare()
    import megatron.core.optimizer as optimizer

    assert torch_adam.megatron_steps_with_torch_adam()  # this machine has neither Transformer Engine nor Apex
    assert torch_adam.activate() is False
    assert "_set_main_param_and_optimizer_states" in vars(optimizer.DistributedOptimizer.__mro__[1])


def test_on_a_gpu_without_transformer_engine_the_optimizer_gets_the_fixes_once(monkeypatch):
    runtime.prepare()
    import megatron.core.optimizer as optimizer

    before = optimizer.DistributedOptimizer
    monkeypatch.setattr(optimizer, "DistributedOptimizer", before)  # restored after the test
    monkeypatch.setattr(torch_adam, "_active", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_adam.activate() is True
    fixed = optimizer.DistributedOptimizer
    assert fixed is not before and issubclass(fixed, before)
    assert {"sharded_state_dict", "_set_main_param_and_optimizer_states"} <= set(vars(fixed))
    assert torch_adam.activate() is True and optimizer.DistributedOptimizer is fixed


def test_with_transformer_engine_or_apex_adam_nothing_is_replaced(monkeypatch):
    runtime.prepare()
    import megatron.core.optimizer as optimizer

    before = optimizer.DistributedOptimizer
    monkeypatch.setattr(optimizer, "Adam", type("FusedAdam", (torch.optim.Optimizer,), {}))
    monkeypatch.setattr(torch_adam, "_active", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_adam.activate() is False and optimizer.DistributedOptimizer is before
