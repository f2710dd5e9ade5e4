"""Parameter counts of a Lucie model, measured on an instance built on the meta device."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from lucie_nemo.distributed import attach_process_groups, single_process_world
from lucie_nemo.model import LucieModelProvider, use_local_layers


@dataclass(frozen=True)
class ParameterReport:
    parameters: int
    components: dict[str, int]  # embedding, attention, mlp, norms, output_layer
    per_layer: int


def _component(name: str) -> str:
    if name.startswith("embedding."):
        return "embedding"
    if name.startswith("output_layer."):
        return "output_layer"
    if "layernorm" in name or "final_norm" in name or name.endswith("layer_norm_weight"):
        return "norms"
    if ".self_attention." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    raise ValueError(f"unclassified parameter {name}")


def count_parameters(provider: LucieModelProvider) -> ParameterReport:
    """Instantiate ``provider`` on the meta device (no memory) and count every parameter."""
    use_local_layers(provider)
    with single_process_world():
        attach_process_groups(provider)
        provider.finalize()
        with torch.device("meta"):
            model = provider.provide()
        components: Counter[str] = Counter()
        for name, parameter in model.named_parameters():
            components[_component(name)] += parameter.numel()
        layer_total = sum(p.numel() for p in model.decoder.layers[0].parameters())
    return ParameterReport(parameters=sum(components.values()), components=dict(components), per_layer=layer_total)
