"""The report's one figure (matplotlib, Agg): loss, LR, global batch and throughput of every phase.

Panels: loss against cumulative tokens with the checkpoints and their revisions marked on the
token axis; LR and global batch against the cumulative step, planned (line) and logged (dots),
deviations as red crosses; tokens/s/GPU (and MFU when the accelerator is known) against the step.
The original run's published logs, when given, are drawn on the loss and LR panels, each phase
stretched onto this run's plan (samples, steps and LR scaled as the plan scales them: a no-op for
a full-size run, the demo scale for a `--tiny` one).
"""

from __future__ import annotations

from lucie_nemo.phases import PHASES
from lucie_nemo.report.original import OriginalPhase
from lucie_nemo.report.status import PhaseStatus
from lucie_nemo.schedule import PhaseSchedule

COLORS = {"pretrain": "tab:blue", "extension": "tab:orange", "anneal": "tab:green"}
ORIGINAL_COLOR = "0.35"
PLAN_POINTS = 500  # planned curves: every logged step plus this many evenly spaced steps
MAX_REVISION_LABELS = 12


def _planned_steps(status: PhaseStatus) -> list[int]:
    last = min(status.plan.train_iters, status.schedule.train_iters)
    spaced = {1 + (last - 1) * i // (PLAN_POINTS - 1) for i in range(PLAN_POINTS)} if last > 1 else {last}
    return sorted(spaced | {s for s in status.series("learning-rate") if 1 <= s <= last})


def _loss_panel(axis, phases: list[PhaseStatus]) -> None:
    for status in phases:
        tokens, loss = status.loss_by_tokens()
        axis.plot(tokens, loss, color=COLORS[status.name], linewidth=1.2, label=status.name)
    checkpoints = [c for status in phases for c in status.checkpoints]
    axis.plot([c.cumulative_tokens for c in checkpoints], [0.0] * len(checkpoints), linestyle="none", marker="|",
              markersize=12, color="black", transform=axis.get_xaxis_transform(), clip_on=False, label="checkpoints")
    published = [c for c in checkpoints if c.revision]
    stride = max(1, -(-len(published) // MAX_REVISION_LABELS))
    for checkpoint in published[::stride] + ([published[-1]] if published and (len(published) - 1) % stride else []):
        axis.annotate(checkpoint.revision, (checkpoint.cumulative_tokens, 0.0), xycoords=axis.get_xaxis_transform(),
                      xytext=(0, 8), textcoords="offset points", rotation=90, fontsize=6, ha="center", va="bottom")
    axis.set_title("Training loss")
    axis.set_xlabel("tokens (cumulative; | checkpoints, with the revision they become)")
    axis.set_ylabel("lm loss")


def _planned_panel(axis, phases: list[PhaseStatus], tag: str, planned, title: str, drawstyle: str = "default") -> None:
    for status in phases:
        steps = _planned_steps(status)
        axis.plot([status.step_offset + s for s in steps], [planned(status.schedule, s) for s in steps],
                  color=COLORS[status.name], linewidth=1.0, drawstyle=drawstyle, label=f"{status.name} plan")
        logged = status.series(tag)
        axis.plot([status.step_offset + s for s in sorted(logged)], [logged[s] for s in sorted(logged)],
                  linestyle="none", marker=".", markersize=3, color=COLORS[status.name], label=f"{status.name} logged")
        wrong = [d for d in status.deviations if d.quantity == tag]
        if wrong:
            axis.plot([status.step_offset + d.step for d in wrong], [d.logged for d in wrong], linestyle="none",
                      marker="x", markersize=8, color="red", label=f"{status.name} deviation")
    axis.set_title(title)
    axis.set_xlabel("step (cumulative)")


def _throughput_panel(axis, phases: list[PhaseStatus]) -> None:
    mfu_axis = None
    for status in phases:
        rates = status.tokens_per_second_per_gpu()
        steps = sorted(rates)
        axis.plot([status.step_offset + s for s in steps], [rates[s] for s in steps], color=COLORS[status.name],
                  linewidth=1.0, label=status.name)
        mfu = status.mfu()
        if mfu:
            mfu_axis = mfu_axis or axis.twinx()
            mfu_axis.plot([status.step_offset + s for s in steps], [100 * mfu[s] for s in steps],
                          color=COLORS[status.name], linewidth=0.8, linestyle=":", label=f"{status.name} MFU")
            mfu_axis.set_ylabel("MFU (%, dotted)")
    devices = sorted({status.plan.device or "CPU" for status in phases})
    axis.set_title(f"Throughput ({', '.join(devices)})")
    axis.set_xlabel("step (cumulative)")
    axis.set_ylabel("tokens/s/GPU")


def _rescaled(status: PhaseStatus, original: OriginalPhase) -> tuple[list[float], list[float], list[float], float]:
    """The original phase on this run's axes: cumulative tokens, cumulative steps and LR; and the LR factor."""
    lucie = PhaseSchedule(PHASES[status.name])
    run = status.schedule
    token_ratio = run.tokens(run.train_iters) / lucie.tokens(lucie.train_iters)
    step_ratio = run.train_iters / lucie.train_iters
    lr_ratio = status.plan.phase.lr.max_lr / lucie.phase.lr.max_lr
    tokens = [status.token_offset + (t - lucie.token_offset) * token_ratio for t in original.tokens]
    steps = [status.step_offset + (s - lucie.step_offset) * step_ratio for s in original.steps]
    return tokens, steps, [lr * lr_ratio for lr in original.lr], token_ratio


def _original(loss_axis, lr_axis, phases: list[PhaseStatus], original: list[OriginalPhase]) -> None:
    by_name = {o.phase: o for o in original}
    drawn = [(status, by_name[status.name]) for status in phases if status.name in by_name]
    rescaled = any(_rescaled(status, o)[3] != 1 for status, o in drawn)
    label = "original Lucie-7B" + (" (rescaled to this run's plan)" if rescaled else "")
    for index, (status, logs) in enumerate(drawn):
        tokens, steps, lr, _ = _rescaled(status, logs)
        end_step = status.step_offset + min(status.plan.train_iters, status.schedule.train_iters)
        keep = [i for i, step in enumerate(steps) if step <= end_step]
        loss_axis.plot([tokens[i] for i in keep], [logs.loss[i] for i in keep], color=ORIGINAL_COLOR, linewidth=1.0,
                       linestyle="--", label=label if index == 0 else f"_{label} {status.name}")
        lr_axis.plot([steps[i] for i in keep], [lr[i] for i in keep], color=ORIGINAL_COLOR, linewidth=1.0,
                     linestyle="--", label=label if index == 0 else f"_{label} {status.name}")


def report_figure(phases: list[PhaseStatus], original: list[OriginalPhase] | None = None, title: str = ""):
    """The figure (a matplotlib Figure, not shown): axes loss, lr, batch, throughput in that order."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 8.5), layout="constrained")
    loss, lr, batch, throughput = figure.subplots(2, 2).flatten()
    _loss_panel(loss, phases)
    _planned_panel(lr, phases, "learning-rate", lambda schedule, step: schedule.lr(step), "Learning rate")
    lr.set_ylabel("LR")
    _planned_panel(batch, phases, "batch-size", lambda schedule, step: schedule.global_batch_size(step),
                   "Global batch", drawstyle="steps-pre")  # iteration s runs from step s-1 to s
    batch.set_ylabel("sequences")
    _throughput_panel(throughput, phases)
    if original:
        _original(loss, lr, phases, original)
    for axis in (loss, lr, batch, throughput):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.suptitle(title)
    return figure
