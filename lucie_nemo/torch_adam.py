"""megatron-core's DistributedOptimizer over torch's AdamW, its fallback where neither Transformer Engine nor
Apex is installed: every CPU, and a GPU node without them (seen on an H200 node: a resumed `lucie train`
failed with a bare AssertionError in the optimizer's state_dict).

torch's Adam keeps a per-parameter ``step`` tensor that two of DistributedOptimizer's checkpoint paths
mishandle; ``with_torch_adam_checkpoints`` fixes both. On a CPU lucie_nemo.cpu_support's redirect includes
it; on a GPU ``activate()`` installs it alone, only when megatron-core's Adam is torch's.
"""

from __future__ import annotations

import importlib

import torch

TORCH_ADAM = (torch.optim.Adam, torch.optim.AdamW)
_MODULE = "megatron.core.optimizer"
_active = False


def with_torch_adam_checkpoints(original):
    """``original`` (DistributedOptimizer) with torch Adam's ``step`` handled on save and load."""

    class DistributedOptimizer(original):
        def sharded_state_dict(self, model_sharded_state_dict, is_loading=False, **kwargs):
            """state_dict() reads torch Adam's per-parameter ``step`` and asserts there is one; a load
            into a fresh optimizer has no state yet: create it as Adam's first step would (zero
            moments, step 0), as megatron-core's other optimizers do on load (init_state_fn)."""
            if is_loading and not self.optimizer.state and isinstance(self.optimizer, TORCH_ADAM):
                self.init_state_fn(self.optimizer, self.config)
                for state in self.optimizer.state.values():
                    state["step"] = torch.zeros((), dtype=torch.float32)
            return super().sharded_state_dict(model_sharded_state_dict, is_loading, **kwargs)

        def _set_main_param_and_optimizer_states(self, model_param, tensors):
            """The fully reshardable load passes every state tensor but ``step`` (restored from the
            param groups by load_state_dict, as one tensor shared by all parameters, which Adam would
            then advance once per parameter); upstream copies every state key from ``tensors``
            (KeyError: 'step'). Keep the restored step, in a tensor of this parameter's own."""
            group_index, group_order = self.model_param_group_index_map[model_param]
            state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
            if "step" in state and "step" not in tensors:
                state["step"] = state["step"].clone()
                tensors = {**tensors, "step": state["step"]}
            super()._set_main_param_and_optimizer_states(model_param, tensors)

    DistributedOptimizer.__module__ = original.__module__
    return DistributedOptimizer


def megatron_steps_with_torch_adam() -> bool:
    return importlib.import_module(_MODULE).Adam in TORCH_ADAM


def activate() -> bool:
    """On a GPU where megatron-core steps with torch's Adam, install the fixed DistributedOptimizer once.
    Returns whether it is installed (the CPU redirects include it: False on a CPU)."""
    global _active
    if not _active and torch.cuda.is_available() and megatron_steps_with_torch_adam():
        module = importlib.import_module(_MODULE)
        module.DistributedOptimizer = with_torch_adam_checkpoints(module.DistributedOptimizer)
        _active = True
    return _active
