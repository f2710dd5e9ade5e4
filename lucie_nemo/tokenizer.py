"""The Lucie tokenizer: faithful loading, checks, and export for transformers 4.x and 5.x.

The published Lucie tokenizer declares ``LlamaTokenizer``; transformers 5 then rebuilds it without
its normalizer and returns ids that differ from ``tokenizer.json``. Here ``tokenizer.json`` is the
only source of truth: `load_tokenizer` reads it as is, `load_hf_tokenizer` refuses a folder whose
transformers form disagrees with it, and `export_tokenizer` writes a folder that loads faithfully.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from lucie_nemo.errors import UserError
from lucie_nemo.staging import staged_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

DEFAULT_TOKENIZER = "OpenLLM-France/Lucie-7B"
LUCIE_VOCAB_SIZE = 65024
BOS_ID, EOS_ID, UNK_ID, PAD_ID = 0, 1, 2, 3
SPECIAL_TOKENS = {"<s>": BOS_ID, "</s>": EOS_ID, "<unk>": UNK_ID, "<pad>": PAD_ID}
BYTE_TOKENS_START = 4
RESERVED_IDS = range(260, 300)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Checked on every load into transformers: languages of the Lucie corpus, code, and every character
# that Lucie's normalizer rewrites (newline, tab, brackets, slash, quotes, dashes, NBSP, CR).
PROBE_TEXT = (
    "Quelle est la capitale de la France ?\nParis. « L’été — c’est “chaud” », dit-elle (à 14 h 30).\r\n"
    "The quick brown fox (aged 7) jumps over 1,234 lazy dogs; 'quoted' [sic] {braces} <tags>.\n"
    "Über den Wolken muss die Freiheit wohl grenzenlos sein – „so“ heißt es 2024.\n"
    "¿Dónde está la biblioteca? ¡Está aquí! ‹ángulo› ‚bajo‘ ―raya\n"
    "L'Italia è una repubblica; però \"città\" e perché.\u00a0Fine\u00a0!\n"
    "def f(x: int) -> dict[str, list[int]]:\n\treturn {'a': [x, 0x1F]}  # 😀 /tmp/x.py\n"
)


def lucie_pipeline() -> dict[str, Any]:
    """Lucie's tokenizer pipeline sections (no vocabulary), shipped as package data."""
    return json.loads(resources.files("lucie_nemo").joinpath("tokenizer_pipeline.json").read_text("utf-8"))


def tokenizer_dir(source: str | os.PathLike) -> Path:
    """Return a local folder holding ``tokenizer.json``: ``source`` itself or its Hub snapshot."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise UserError(f"{path} has no tokenizer.json: pass a folder holding the tokenizer files")
        return path
    if path.exists() or not _HUB_ID.match(str(source)):
        raise UserError(
            f"tokenizer source {source} is neither a folder nor a Hub id: "
            f"pass a folder holding tokenizer.json or a Hub id such as {DEFAULT_TOKENIZER}"
        )
    return _download(str(source))


def _download(repo_id: str) -> Path:
    """Fetch only the tokenizer files of a Hub repository (cached by huggingface_hub)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as error:  # offline, unknown or gated repository: all end the same way
        raise UserError(
            f"could not download the tokenizer of Hub repository {repo_id} "
            f"({type(error).__name__}: {' '.join(str(error).split())}); "
            "check the id and the network access, or pass a local folder holding tokenizer.json"
        ) from None
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"Hub repository {repo_id} has no tokenizer.json: pass a repository or folder that has one")
    return folder


def check_layout(tokenizer: Tokenizer, *, expect_lucie_size: bool = False) -> None:
    """Refuse a tokenizer without Lucie's special ids, byte-fallback tokens, BOS handling or (if asked) size."""
    fix = "use a Lucie-layout tokenizer (`lucie tokenizer train` makes one)"
    byte_tokens = {f"<0x{byte:02X}>": BYTE_TOKENS_START + byte for byte in range(256)}
    for token, expected in (SPECIAL_TOKENS | byte_tokens).items():
        if (found := tokenizer.token_to_id(token)) != expected:
            raise UserError(f"tokenizer maps {token} to id {found}, Lucie needs {expected}: {fix}")
    if not getattr(tokenizer.model, "byte_fallback", False):
        raise UserError(f"tokenizer model is not a byte-fallback BPE: {fix}")
    ids = tokenizer.encode("Bonjour").ids
    if ids[0] != BOS_ID or ids[-1] == EOS_ID:
        raise UserError(f"tokenizer encodes 'Bonjour' as {ids}, Lucie adds <s> and not </s>: {fix}")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if expect_lucie_size and size != LUCIE_VOCAB_SIZE:
        raise UserError(
            f"tokenizer has {size} entries, Lucie's has {LUCIE_VOCAB_SIZE}: "
            "pass the Lucie tokenizer, or do not ask for the Lucie size"
        )


def load_tokenizer(source: str | os.PathLike = DEFAULT_TOKENIZER, *, expect_lucie_size: bool = False) -> Tokenizer:
    """Load ``tokenizer.json`` from a folder or Hub id as is (the faithful ids) and check Lucie's layout."""
    tokenizer = Tokenizer.from_file(str(tokenizer_dir(source) / "tokenizer.json"))
    check_layout(tokenizer, expect_lucie_size=expect_lucie_size)
    return tokenizer


def load_hf_tokenizer(
    source: str | os.PathLike = DEFAULT_TOKENIZER, *, expect_lucie_size: bool = False
) -> PreTrainedTokenizerFast:
    """Load a folder or Hub id with ``AutoTokenizer`` and refuse it unless it matches its ``tokenizer.json``."""
    from transformers import AutoTokenizer

    folder = tokenizer_dir(source)
    reference = load_tokenizer(folder, expect_lucie_size=expect_lucie_size)
    loaded = AutoTokenizer.from_pretrained(str(folder))
    check_faithful(loaded, reference, folder)
    return loaded


def check_faithful(loaded: Any, reference: Tokenizer, folder: Path) -> None:
    """Refuse a transformers tokenizer whose ids or decoding differ from ``reference`` on `PROBE_TEXT`."""
    import transformers

    expected = reference.encode(PROBE_TEXT).ids
    got = loaded.encode(PROBE_TEXT)
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        problem = f"ids that differ from its tokenizer.json on the probe text from position {at}"
    elif any(
        loaded.decode(expected, skip_special_tokens=skip) != reference.decode(expected, skip_special_tokens=skip)
        for skip in (False, True)
    ):
        problem = "a decoding that differs from its tokenizer.json on the probe text"
    else:
        return
    config = folder / "tokenizer_config.json"
    declared = json.loads(config.read_text("utf-8")).get("tokenizer_class") if config.is_file() else None
    raise UserError(
        f"{folder} loads in transformers {transformers.__version__} as {type(loaded).__name__} with {problem} "
        f"(its tokenizer_config.json declares tokenizer_class {declared!r}): "
        f"run `lucie tokenizer export {folder} OUT` and use OUT"
    )


def hf_tokenizer_config(chat_template: str | None) -> dict[str, Any]:
    """The ``tokenizer_config.json`` that makes transformers 4.x and 5.x use ``tokenizer.json`` as is.

    ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in 5.x) takes normalizer, BOS template and decoder
    from ``tokenizer.json``; both ignore ``add_bos_token``/``add_eos_token`` then, kept as documentation.
    """
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(token["id"]): {key: value for key, value in token.items() if key != "id"}
            for token in lucie_pipeline()["added_tokens"]
        },
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def special_tokens_map() -> dict[str, dict[str, Any]]:
    """The ``special_tokens_map.json`` of Lucie's tokenizer."""
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return {name: {"content": content, **flags} for name, content in names.items()}


def write_hf_config(folder: Path, chat_template: str | None) -> None:
    """Write ``tokenizer_config.json`` and ``special_tokens_map.json`` beside a ``tokenizer.json``."""
    for name, content in (
        ("tokenizer_config.json", hf_tokenizer_config(chat_template)),
        ("special_tokens_map.json", special_tokens_map()),
    ):
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_chat_template(folder: Path) -> str | None:
    """The chat template of a tokenizer folder (``chat_template.jinja`` or ``tokenizer_config.json``), if any."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text("utf-8")
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text("utf-8")).get("chat_template") if config.is_file() else None


def export_tokenizer(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the tokenizer files shipped with a model: ``tokenizer.json`` byte for byte, faithful configs.

    The result is loaded back with ``AutoTokenizer`` and compared with ``tokenizer.json`` before it
    is moved into ``out``; the chat template of ``src`` is kept.
    """
    folder = tokenizer_dir(src)
    load_tokenizer(folder)
    out = Path(out)
    with staged_folder(out, replace_files=True) as staging:
        shutil.copyfile(folder / "tokenizer.json", staging / "tokenizer.json")
        write_hf_config(staging, read_chat_template(folder))
        load_hf_tokenizer(staging)
    return out
