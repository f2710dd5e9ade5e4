"""`lucie schedule`: the step, sample, token and LR accounting of a phase, as JSON lines."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers, e.g. 1,2000,753851") from None


def schedule(
    phase: Annotated[str, typer.Argument(help="pretrain, extension or anneal")],
    steps: Annotated[Optional[str], typer.Option(help="Comma-separated steps, e.g. 1,5000,753851")] = None,
    revisions: Annotated[bool, typer.Option("--revisions", help="One line per published checkpoint")] = False,
) -> None:
    """Print one JSON object per requested step (or per published revision)."""
    from lucie_nemo.phases import get_phase
    from lucie_nemo.schedule import PhaseSchedule

    with user_errors():
        if (steps is None) == (not revisions):
            raise typer.BadParameter("give either --steps S1,S2,... or --revisions")
        plan = PhaseSchedule(get_phase(phase))
        if revisions:
            for step in plan.revision_steps():
                record = plan.record(step)
                line = {
                    "revision": plan.phase.revision(step),
                    "step": step,
                    "cumulative_step": record.cumulative_step,
                    "cumulative_tokens": record.cumulative_tokens,
                    "published": step in plan.phase.published_steps,
                }
                print(json.dumps(line))
            return
        for step in _parse_steps(steps):
            print(json.dumps(asdict(plan.record(step))))


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule)
