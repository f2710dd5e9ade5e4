"""The weights-only import as `lucie import` did it before it streamed: the whole model built in bf16, every
parameter filled from the source, and Megatron-Bridge's ``save_megatron_model`` writing it (the reference that
tests/test_import_weights_streamed.py compares with, and the baseline of bench/import_hf.py and
bench/import_universal.py). Run as a script: ``python in_memory_import.py {hf,universal} SOURCE OUT``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

# local-spec parameter name in a layer -> Megatron source (converters.layout.LAYER_TENSORS' keys)
_LOCAL = {"input_layernorm.weight": "attn_norm", "self_attention.linear_qkv.weight": "qkv",
          "self_attention.linear_proj.weight": "proj", "pre_mlp_layernorm.weight": "mlp_norm",
          "mlp.linear_fc1.weight": "fc1", "mlp.linear_fc2.weight": "fc2"}


def source_of(name: str) -> tuple[str, int | None]:
    """(Megatron source, layer) of a local-spec parameter name."""
    if name.startswith("decoder.layers."):
        layer, local = name.removeprefix("decoder.layers.").split(".", 1)
        return _LOCAL[local], int(layer)
    return name, None


def in_memory_import(shape, phase, read: Callable[[str, int | None], torch.Tensor], out: Path) -> None:
    """Build the model of ``shape``, copy ``read(source, layer)`` into every parameter, save it at ``out``."""
    from megatron.bridge.training.model_load_save import save_megatron_model

    from converters.megatron_model import build_model
    from lucie_nemo.distributed import single_process_world

    with single_process_world():
        model = build_model(shape, phase, torch.bfloat16)
        for name, parameter in model.named_parameters():
            with torch.no_grad():
                parameter.copy_(read(*source_of(name)))  # bf16 of the source, rounded by copy_
        save_megatron_model([model], out)


def import_in_memory(kind: str, source: Path, out: Path) -> None:
    """The in-memory import of a Hugging Face folder or a universal checkpoint (of a phase it names alone)."""
    if kind == "hf":
        from converters.hf_writer import read_json
        from converters.import_hf import _SafetensorsFolder, hf_phase
        from converters.layout import megatron_tensor
        from lucie_nemo.hf_config import shape_from_hf_config

        config = read_json(source / "config.json")
        shape = shape_from_hf_config(config, "config.json")
        hf = _SafetensorsFolder(source)
        in_memory_import(shape, hf_phase(config, None), lambda name, layer: megatron_tensor(shape, hf, name, layer), out)
        return
    from converters.universal.checkpoint import UniversalCheckpoint

    checkpoint = UniversalCheckpoint(source)
    in_memory_import(checkpoint.shape, checkpoint.phase(), checkpoint.megatron, out)


if __name__ == "__main__":
    from lucie_nemo import runtime

    runtime.prepare()
    import_in_memory(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
