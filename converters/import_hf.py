"""Hugging Face Lucie folder -> torch_dist checkpoint that the phase recipes take as ``pretrained_checkpoint``.

The checkpoint Megatron-Bridge's own ``save_megatron_model`` writes for the model with local layers in bf16,
written one tensor at a time from the safetensors (converters/weights_only.py): ``iter_0000000/`` (torch_dist,
run_config.yaml), ``latest_train_state.pt`` and ``latest_checkpointed_iteration.txt``; the folder's tokenizer goes
to ``iter_0000000/tokenizer/``. The local spec saves its norms under the Transformer Engine names
(``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``), so GPU recipes with TE layers load it too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from converters.hf_writer import check_folder, read_json, weight_map
from converters.layout import megatron_tensor
from lucie_nemo.staging import resumable_folder
from lucie_nemo.distributed import single_process_world
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import rope_theta_of, shape_from_hf_config
from lucie_nemo.architecture import LucieShape
from lucie_nemo.phases import PHASES, Phase, get_phase
from lucie_nemo.tokenizer import export_tokenizer


@dataclass(frozen=True)
class ImportResult:
    out: Path
    shape: LucieShape
    phase: Phase
    num_parameters: int


def hf_phase(config: dict, name: str | None) -> Phase:
    """The phase whose RoPE theta and context length ``config`` has (or ``name``)."""
    if name is not None:
        return get_phase(name)
    key = (config.get("max_position_embeddings"), rope_theta_of(config))
    for phase in PHASES.values():
        if (phase.seq_length, float(phase.rotary_base)) == key:
            return phase
    raise UserError(f"config.json has max_position_embeddings/rope_theta {key}, which no phase has: pass --phase")


class _SafetensorsFolder:
    """Tensors of a Hugging Face folder by name, each read from its shard opened for that read alone (an open shard
    keeps mapped every page read from it: memory growing with the shard)."""

    def __init__(self, folder: Path):
        self.folder, self.weight_map = folder, weight_map(folder)

    def __call__(self, name: str) -> torch.Tensor:
        with safe_open(self.folder / self.weight_map[name], framework="pt") as shard:
            return shard.get_tensor(name)


def import_hf(hf_dir: str | Path, out: str | Path, phase: str | None = None, progress: bool = True) -> ImportResult:
    """Write the weights of ``hf_dir`` as a weights-only Megatron-Bridge torch_dist checkpoint at ``out``, continuing
    a killed run."""
    from converters.weights_only import ITERATION, write_weights_only

    hf_dir, out = Path(hf_dir), Path(out)
    check_folder(hf_dir)
    config = read_json(hf_dir / "config.json")
    shape = shape_from_hf_config(config, str(hf_dir / "config.json"))
    resolved = hf_phase(config, phase)
    manifest = {"import": "hugging face folder", "source": str(hf_dir.resolve()), "phase": resolved.name}
    source = _SafetensorsFolder(hf_dir)
    with single_process_world(), resumable_folder(out, manifest) as work:
        count = write_weights_only(work, shape, resolved,
                                   lambda tensor, layer, _: megatron_tensor(shape, source, tensor, layer), progress)
        if (hf_dir / "tokenizer.json").is_file():  # where `lucie export` looks for it (Bridge's own copy re-serializes it)
            shutil.rmtree(work.path / ITERATION / "tokenizer", ignore_errors=True)  # a killed run's
            export_tokenizer(hf_dir, work.path / ITERATION / "tokenizer")
    return ImportResult(out, shape, resolved, count)
