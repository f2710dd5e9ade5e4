"""DeepSpeed universal checkpoint (Lucie's released optimizer states) -> Megatron-Bridge torch_dist checkpoint.

``--weights-only``: the bf16 of every ``fp32.pt``, re-packed to megatron-core's layout, written like a Hugging
Face import (``iter_0000000/``), for a recipe's ``checkpoint.pretrained_checkpoint``; one tensor at a time
(converters/weights_only.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.universal.checkpoint import UniversalCheckpoint
from converters.universal.facts import check_run_facts
from converters.weights_only import write_weights_only
from lucie_nemo.distributed import single_process_world
from lucie_nemo.model import LucieShape
from lucie_nemo.phases import Phase
from lucie_nemo.staging import resumable_folder


@dataclass(frozen=True)
class UniversalImportResult:
    out: Path
    shape: LucieShape
    phase: Phase
    iteration: int  # the universal checkpoint's
    num_parameters: int


def import_universal_weights(folder: str | Path, out: str | Path, phase: str | None = None,
                             tiny: bool = False, progress: bool = True) -> UniversalImportResult:
    """Write the weights of universal checkpoint ``folder`` as a weights-only torch_dist checkpoint at ``out``
    (``tiny``: the checkpoint is of a scaled-down phase of ``lucie train --tiny``), continuing a killed run."""
    checkpoint = UniversalCheckpoint(folder)
    resolved = checkpoint.phase(phase, tiny)
    check_run_facts(checkpoint, resolved)
    manifest = {"import": "universal weights", "source": str(checkpoint.folder.resolve()), "phase": resolved.name,
                "tiny": tiny}
    with single_process_world(), resumable_folder(out, manifest) as work:
        count = write_weights_only(work, checkpoint.shape, resolved,
                                   lambda source, layer, _: checkpoint.megatron(source, layer, "fp32"), progress)
    return UniversalImportResult(Path(out), checkpoint.shape, resolved, checkpoint.info.iteration, count)
