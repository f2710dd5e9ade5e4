"""`lucie demo`: the main job on one machine (see lucie_nemo/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lucie_nemo.cli.errors import user_errors


def demo(
    workdir: Annotated[Path, typer.Option(help="Work folder (cached stages: re-runs reuse them)")] = Path("demo"),
    tokenizer: Annotated[Optional[Path], typer.Option(help="Use this tokenizer folder instead of training one")] = None,
    corpus_mb: Annotated[float, typer.Option(help="Size of the demo corpus, MB")] = 4.0,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary of the trained demo tokenizer")] = 8_192,
    fast: Annotated[bool, typer.Option("--fast", help="Shorter phases (the CI smoke variant)")] = False,
) -> None:
    """Corpus, tokenizer, datasets, phases 1 -> 2 -> 3 on a tiny Lucie, exports, verify, samples."""
    with user_errors():
        from lucie_nemo.demo import DemoOptions, format_report, run_demo

        options = DemoOptions(
            workdir=workdir, corpus_mb=corpus_mb, vocab_size=vocab_size, tokenizer=tokenizer,
            train_iters={"pretrain": 60, "extension": 6, "anneal": 6} if fast else {},
        )
        report = run_demo(options)
        print(format_report(report))
        if not report.parity_ok or report.deviations:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
