"""What a phase run was meant to do, recorded beside its outputs when training starts.

Megatron-Bridge writes the run's full config only into checkpoints (``run_config.yaml``), i.e.
after the first save (5,000 steps into phase 1), too late to catch a trainer that ignores the plan
on its first steps. So ``lucie train`` writes ``plan.json`` into ``<output-root>/<phase>/`` before
training: the phase as trained (scaled for ``--tiny``), the iterations, the world size, the model's
sizes and the accelerator. ``lucie report`` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lucie_nemo.architecture import LucieShape
from lucie_nemo.errors import UserError
from lucie_nemo.phases import PHASES, BatchRampup, LRSchedule, OptimizerSettings, ParallelLayout, Phase

PLAN_FILE = "plan.json"
# Dense bf16 peak of the accelerators whose MFU the report can state (NVIDIA's data sheets, SXM parts).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass(frozen=True)
class RunPlan:
    """One phase run's plan: its phase facts (as trained), length, world and model."""

    phase: Phase
    train_iters: int
    world_size: int
    model: LucieShape
    device: str | None  # accelerator name (torch.cuda.get_device_name), None on CPU
    recorded: bool  # False: no plan.json, the full-size Lucie phase is assumed

    @property
    def parameters(self) -> int:
        """Parameters of a Lucie-shaped model (untied embedding and output layer, no biases)."""
        m = self.model
        kv = 2 * m.num_query_groups * m.head_dim * m.hidden_size
        layer = 2 * m.hidden_size * m.hidden_size + kv + 3 * m.ffn_hidden_size * m.hidden_size + 2 * m.hidden_size
        return 2 * m.vocab_size * m.hidden_size + m.num_layers * layer + m.hidden_size

    @property
    def flops_per_token(self) -> float:
        """Model FLOPs per trained token: 6N + 12 * layers * hidden * sequence (README's count)."""
        return 6 * self.parameters + 12 * self.model.num_layers * self.model.hidden_size * self.phase.seq_length

    @property
    def peak_flops(self) -> float | None:
        """The accelerator's dense bf16 peak, when it is one the report knows."""
        return next((peak for name, peak in PEAK_BF16_FLOPS.items() if self.device and name in self.device), None)


def write_run_plan(output_dir: Path, phase: Phase, train_iters: int, world_size: int, model: LucieShape,
                   device: str | None) -> Path:
    """Record the plan of the run writing into ``output_dir`` (replaced atomically on each start)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"phase": asdict(phase), "train_iters": train_iters, "world_size": world_size,
              "model": asdict(model), "device": device}
    temporary = output_dir / f".{PLAN_FILE}.tmp"
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(output_dir / PLAN_FILE)
    return output_dir / PLAN_FILE


def _phase_from(record: dict) -> Phase:
    fields = dict(record)
    fields["lr"] = LRSchedule(**fields["lr"])
    fields["optimizer"] = OptimizerSettings(**fields["optimizer"])
    fields["original_layout"] = ParallelLayout(**fields["original_layout"])
    fields["rampup"] = BatchRampup(**fields["rampup"]) if fields["rampup"] else None
    fields["published_steps"] = tuple(fields["published_steps"])
    return Phase(**fields)


def read_run_plan(run_dir: Path, phase_name: str) -> RunPlan:
    """The plan recorded in ``run_dir``, or Lucie-7B's full-size phase if the run recorded none."""
    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.schedule import PhaseSchedule

    path = run_dir / PLAN_FILE
    if not path.is_file():
        phase = PHASES[phase_name]
        layout = phase.original_layout
        return RunPlan(phase, PhaseSchedule(phase).train_iters, layout.world_size, LUCIE_7B, None, recorded=False)
    try:
        record = json.loads(path.read_text())
        return RunPlan(_phase_from(record["phase"]), int(record["train_iters"]), int(record["world_size"]),
                       LucieShape(**record["model"]), record["device"], recorded=True)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a plan written by `lucie train` ({error}): delete it to compare the run "
                        "with the full-size Lucie phase, or re-run `lucie train` to write it again") from None
