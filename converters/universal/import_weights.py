"""DeepSpeed universal checkpoint (Lucie's released optimizer states) -> Megatron-Bridge torch_dist checkpoint.

``--weights-only``: the bf16 of every ``fp32.pt``, re-packed to megatron-core's layout, written like a Hugging
Face import (``iter_0000000/``), for a recipe's ``checkpoint.pretrained_checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from converters.import_hf import check_written
from converters.megatron_model import build_model
from converters.universal.checkpoint import UniversalCheckpoint
from converters.universal.facts import check_run_facts
from lucie_nemo.distributed import single_process_world
from lucie_nemo.errors import UserError
from lucie_nemo.model import LucieShape
from lucie_nemo.phases import Phase
from lucie_nemo.staging import staged_folder


@dataclass(frozen=True)
class UniversalImportResult:
    out: Path
    shape: LucieShape
    phase: Phase
    iteration: int  # the universal checkpoint's
    num_parameters: int


def import_universal_weights(folder: str | Path, out: str | Path, phase: str | None = None,
                             tiny: bool = False) -> UniversalImportResult:
    """Write the weights of universal checkpoint ``folder`` as a weights-only torch_dist checkpoint at ``out``
    (``tiny``: the checkpoint is of a scaled-down phase of ``lucie train --tiny``)."""
    from megatron.bridge.training.model_load_save import save_megatron_model

    checkpoint = UniversalCheckpoint(folder)
    resolved = checkpoint.phase(phase, tiny)
    check_run_facts(checkpoint, resolved)
    with single_process_world(), staged_folder(out) as staging:
        model = build_model(checkpoint.shape, resolved, torch.bfloat16)
        parameters = dict(model.named_parameters())
        for name, tensor in checkpoint.megatron_tensors():
            if parameters[name].shape != tensor.shape:
                raise UserError(f"{name}: {tuple(tensor.shape)} from {folder}, the model needs {tuple(parameters[name].shape)}")
            with torch.no_grad():
                parameters[name].copy_(tensor)  # bf16 of fp32, rounded as Tensor.bfloat16() does
        save_megatron_model([model], staging)
        check_written(staging, model, checkpoint.shape)
        count = sum(p.numel() for p in parameters.values())
    return UniversalImportResult(Path(out), checkpoint.shape, resolved, checkpoint.info.iteration, count)
