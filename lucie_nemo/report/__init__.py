"""`lucie report`: a run against its plan and against the original Lucie run, as a picture and a summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lucie_nemo.report.original import OriginalPhase
from lucie_nemo.report.status import LR_ABS_TOLERANCE, LR_REL_TOLERANCE, Deviation, PhaseStatus, run_status
from lucie_nemo.staging import staged_folder

FIGURE = "report.png"
SUMMARY = "report.md"
LISTED_DEVIATIONS = 5  # per phase, in report.md and the JSON


@dataclass
class RunReport:
    run_root: Path
    output: Path
    phases: list[PhaseStatus]
    original: list[OriginalPhase] | None = None

    @property
    def deviations(self) -> list[Deviation]:
        return [d for status in self.phases for d in status.deviations]

    def to_json(self) -> dict:
        return {
            "run_root": str(self.run_root),
            "figure": str(self.output / FIGURE),
            "summary": str(self.output / SUMMARY),
            "tolerances": {"learning_rate_relative": LR_REL_TOLERANCE,
                           "learning_rate_absolute_of_peak": LR_ABS_TOLERANCE, "batch_size": 0},
            "deviation_count": len(self.deviations),
            "phases": [_phase_json(status) for status in self.phases],
            "original": {o.phase: len(o.steps) for o in self.original} if self.original else None,
        }


def _phase_json(status: PhaseStatus) -> dict:
    last = status.checkpoints[-1] if status.checkpoints else None
    return {
        "phase": status.name,
        "plan": "plan.json" if status.plan.recorded else "Lucie-7B phase facts (the run recorded no plan.json)",
        "steps_done": status.steps_done,
        "steps_planned": status.plan.train_iters,
        "tokens": status.tokens_done,
        "last_loss": status.last_loss,
        "tokens_per_second_per_gpu": status.current_throughput,
        "eta_seconds": status.eta_seconds,
        "last_checkpoint": {"step": last.step, "revision": last.revision} if last else None,
        "deviation_count": len(status.deviations),
        "deviations": [{"step": d.step, "quantity": d.quantity, "logged": d.logged, "planned": d.planned}
                       for d in status.deviations[:LISTED_DEVIATIONS]],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def summary_markdown(report: RunReport) -> str:
    lines = [f"# Run report: {report.run_root}", "", f"![run]({FIGURE})", "",
             "| phase | steps done / planned | tokens | last loss | tokens/s/GPU | ETA | last checkpoint | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for status in report.phases:
        phase = _phase_json(status)
        last = phase["last_checkpoint"]
        checkpoint = f"{last['step']} ({last['revision'] or 'extra save'})" if last else "-"
        loss = f"{phase['last_loss']:.3f}" if phase["last_loss"] is not None else "-"
        rate = f"{phase['tokens_per_second_per_gpu']:,.0f}" if phase["tokens_per_second_per_gpu"] else "-"
        lines.append(f"| {status.name} | {phase['steps_done']:,} / {phase['steps_planned']:,} | {phase['tokens']:,} | "
                     f"{loss} | {rate} | {_duration(phase['eta_seconds'])} | {checkpoint} | {phase['plan']} |")
    lines += ["", "## Deviations from the plan", "",
              f"Tolerances: LR within {LR_REL_TOLERANCE:g} of the planned value (relative), or "
              f"{LR_ABS_TOLERANCE:g} x the phase's peak LR near zero; global batch exactly.", ""]
    if not report.deviations:
        lines.append("None: every logged LR and global batch follows the plan.")
    for status in report.phases:
        if status.deviations:
            lines.append(f"- **{status.name}**: {len(status.deviations)} deviating value(s); first ones:")
            for d in status.deviations[:LISTED_DEVIATIONS]:
                planned = "past the planned end" if d.planned is None else f"planned {d.planned:.6g}"
                lines.append(f"  - step {d.step}: {d.quantity} logged {d.logged:.6g}, {planned}")
    return "\n".join(lines) + "\n"


def run_name(run_root: Path) -> str:
    """A run's name: its folder's, or the folder above when it is the conventional ``runs`` (``lucie train``'s
    default output root, the demo's WORKDIR/runs)."""
    folder = run_root.resolve()
    return folder.parent.name if folder.name == "runs" and folder.parent.name else folder.name


def write_report(run_root: Path, output: Path | None = None, original: str | None = None) -> RunReport:
    """Read the run, draw and summarise it into ``output`` (default ``run_root/report``), all files or none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lucie_nemo.report.figure import report_figure
    from lucie_nemo.report.original import load_original

    output = output or run_root / "report"
    phases = run_status(run_root)
    original_logs = load_original(original) if original else None
    report = RunReport(run_root, output, phases, original_logs)
    figure = report_figure(phases, original_logs, title=f"lucie report: {run_name(run_root)}")
    with staged_folder(output, replace_files=True) as staging:
        FigureCanvasAgg(figure).print_png(staging / FIGURE)
        (staging / SUMMARY).write_text(summary_markdown(report))
    return report
