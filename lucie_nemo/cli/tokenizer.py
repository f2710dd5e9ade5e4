"""`lucie tokenizer`: export the Lucie tokenizer so transformers loads it faithfully, or train a new one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucie_nemo.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    """Add the ``tokenizer`` command group (``export``, ``train``) to ``app``."""
    group = typer.Typer(
        help="Export or train a Lucie-layout tokenizer that transformers 4.x and 5.x load faithfully.",
        no_args_is_help=True,
    )
    group.command("export")(export)
    group.command("train")(train)
    app.add_typer(group, name="tokenizer")


def export(
    src: Annotated[str, typer.Argument(help="Tokenizer folder or Hub id, e.g. OpenLLM-France/Lucie-7B.")],
    out: Annotated[Path, typer.Argument(help="Output folder: created, or its tokenizer files replaced.")],
) -> None:
    """Write tokenizer.json unchanged with configs that make AutoTokenizer load it faithfully, then verify."""
    with user_errors():
        from lucie_nemo.tokenizer import export_tokenizer

        folder = export_tokenizer(src, out)
    print(f"wrote {folder}: tokenizer.json unchanged, verified with AutoTokenizer")


def train(
    corpus: Annotated[list[Path], typer.Argument(help="Plain text files, or .jsonl files with one record per line.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Entries in the vocabulary (Lucie: 65024).")],
    output: Annotated[Path, typer.Option("--output", help="Output folder for the tokenizer files.")],
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text in .jsonl records.")] = "text",
) -> None:
    """Train a byte-fallback BPE with Lucie's normalizer and id layout (specials 0..3, bytes 4..259)."""
    with user_errors():
        from lucie_nemo.tokenizer import load_tokenizer
        from lucie_nemo.tokenizer_train import train_tokenizer

        folder = train_tokenizer(corpus, vocab_size, output, text_field=text_field)
        size = load_tokenizer(folder).get_vocab_size(with_added_tokens=True)
    print(f"wrote {folder}: {size} tokens, verified with AutoTokenizer")
