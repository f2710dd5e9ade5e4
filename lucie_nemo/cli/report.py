"""`lucie report`: a run's picture and summary against its plan (and the original run's logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors


def report(
    run_root: Annotated[Path, typer.Argument(help="The run's --output-root (holds <phase>/tensorboard)")],
    output: Annotated[Optional[Path], typer.Option(help="Folder for report.png and report.md (default RUN_ROOT/report)")] = None,
    original: Annotated[Optional[str], typer.Option(help="The original run's logs: a copy of the model repository or its Hub id (OpenLLM-France/Lucie-7B)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Draw and summarise RUN_ROOT; exit 1 when a logged LR or batch deviates from the plan."""
    with user_errors():
        from lucie_nemo.report import summary_markdown, write_report

        result = write_report(run_root, output, original)
    if as_json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(summary_markdown(result), end="")
        print(f"report: {result.output / 'report.png'}")
    if result.deviations:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
