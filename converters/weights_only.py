"""A weights-only Megatron-Bridge checkpoint (``iter_0000000/``, what ``save_megatron_model`` writes), one tensor at
a time: the checkpoint Bridge writes for the model, without the model in memory.

``save_megatron_model`` writes the template (converters/scaled_template.py): a model of the real depth, heads and
vocabulary at a tiny width, local layers in bf16. Its tensors are then written at the real widths, each read from
the source when the writer asks for it and cast to the template's dtype (bf16, the norms fp32) as ``Tensor.copy_``
into the parameter casts, and its ``run_config.yaml`` is written again with the real model's provider in the
``model`` section, as Bridge's ``ConfigContainer.to_yaml`` serializes it.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch
import yaml

from lucie_nemo import runtime

runtime.prepare()  # before Megatron is imported (import hook, quiet logs, CPU redirects)

from megatron.bridge.training.config import ConfigContainer  # noqa: E402
from megatron.training.config.yaml_utils import safe_yaml_representers  # noqa: E402

from converters.megatron_model import build_model, local_provider  # noqa: E402
from converters.scaled_template import MODEL, Read, fresh_template, template_shape, write_scaled  # noqa: E402
from lucie_nemo.architecture import LucieShape  # noqa: E402
from lucie_nemo.phases import Phase  # noqa: E402
from lucie_nemo.staging import ResumableFolder  # noqa: E402

ITERATION = "iter_0000000"
WEIGHT = "weight"  # the one source state a weights-only import reads


def write_weights_only(work: ResumableFolder, shape: LucieShape, phase: Phase, read: Read, progress: bool) -> int:
    """Write the weights-only checkpoint of a model of ``shape`` into work folder ``work``, each weight read as
    ``read(source, layer, WEIGHT)``, continuing where a killed run stopped (call inside
    lucie_nemo.distributed.single_process_world); its parameter count."""
    from megatron.bridge.training.model_load_save import save_megatron_model

    template = fresh_template(work.state)
    with contextlib.redirect_stdout(io.StringIO()):  # Bridge's "saving checkpoint ...": the command says what it wrote
        save_megatron_model([build_model(template_shape(shape), phase, torch.bfloat16)], template)
    items = write_scaled(work.path, template, ITERATION, shape, read, {MODEL: WEIGHT}, work.state / "written",
                         progress)
    _write_run_config(work.path / ITERATION / "run_config.yaml", shape, phase)
    return sum(math.prod(item.tensor_data.chunk.sizes) for item in items if item.tensor_data is not None)


def _write_run_config(path: Path, shape: LucieShape, phase: Phase) -> None:
    """The template's ``run_config.yaml`` with the model of ``shape`` in its ``model`` section and the folder written
    as the save folder (as Bridge writes them)."""
    config = yaml.safe_load(path.read_text())
    config["checkpoint"]["save"] = str(path.parents[1])
    config["model"] = ConfigContainer._convert_value_to_dict(local_provider(shape, phase, torch.bfloat16))
    with safe_yaml_representers(), open(path, "w") as file:
        yaml.safe_dump(config, file, default_flow_style=False)
