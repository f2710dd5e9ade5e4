"""Turn the library's user-facing errors into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
import sys

import typer

from lucie_nemo.errors import UserError


@contextlib.contextmanager
def user_errors():
    """Print ``error: ...`` for a UserError or a missing file, then exit with code 2."""
    try:
        yield
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
