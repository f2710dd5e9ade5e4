"""The `lucie` command line: one thin sub-module per command group, over the library."""

from __future__ import annotations

import importlib

import typer

# Each module defines `register(app)`; imports inside commands stay lazy so that
# `lucie schedule` answers without loading torch or Megatron.
COMMAND_MODULES = ("model", "schedule", "plan", "train", "launch", "tokenizer", "data", "convert", "demo", "report")

app = typer.Typer(
    name="lucie",
    help="Train, convert and publish Lucie-class models with Megatron-Bridge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"lucie_nemo.cli.{_name}").register(app)


def main() -> None:
    app()
