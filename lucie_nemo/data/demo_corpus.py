"""A small real multilingual demo corpus (fr, en, de, es, it and code), built offline at set-up.

Prose comes from Debian's manual pages and their translations (packages ``manpages``, ``manpages-fr``,
``manpages-de``, ``manpages-es``, ``manpages-it`` and their ``-dev`` companions), fetched with
``apt-get download`` (no root needed once the package lists exist) and turned from roff into plain text
here; code is the Python standard library of the running interpreter. Licences vary by package, so the
text is built on each machine, never committed. One JSONL file per language, one ``{"text": ...}``
document per manual page or source file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from lucie_nemo.errors import UserError

MANPAGE_PACKAGES = {
    language: (f"manpages{suffix}", f"manpages{suffix}-dev")
    for language, suffix in (("en", ""), ("fr", "-fr"), ("de", "-de"), ("es", "-es"), ("it", "-it"))
}
LANGUAGES = (*MANPAGE_PACKAGES, "code")
DEFAULT_MAX_MB = 6.0
MIN_DOCUMENT_CHARS = 200  # shorter pages are links or stubs
MANIFEST = "demo_corpus.json"


def build_demo_corpus(output_dir: Path, max_mb: float = DEFAULT_MAX_MB, *, progress: bool = True) -> list[Path]:
    """Write ``OUT/{en,fr,de,es,it,code}.jsonl`` with about ``max_mb`` MB of text in all: an equal share
    each (whole documents, the last one may pass it; a language with less text gives all it has). Files
    of an earlier build of the same size are reused; the downloaded packages are kept in ``OUT/debs/``."""
    from tqdm import tqdm

    if max_mb <= 0:
        raise UserError(f"the demo corpus size must be positive, got {max_mb} MB")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{language}.jsonl" for language in LANGUAGES]
    manifest = {"max_mb": max_mb, "languages": list(LANGUAGES)}
    manifest_path = output_dir / MANIFEST
    if not manifest_path.is_file() or json.loads(manifest_path.read_text()) != manifest:
        for path in paths:
            path.unlink(missing_ok=True)
        manifest_path.write_text(json.dumps(manifest) + "\n")
    budget = int(max_mb * 1e6 / len(LANGUAGES))
    todo = [language for language, path in zip(LANGUAGES, paths) if not path.is_file()]
    packages = [package for language in todo for package in MANPAGE_PACKAGES.get(language, ())]
    debs = _package_files(packages, output_dir / "debs")
    bar = tqdm(total=budget * len(todo), unit="B", unit_scale=True, desc="demo corpus", disable=not (progress and todo))
    with bar:
        for language in todo:
            if language == "code":
                documents = _python_sources()
            else:
                documents = (text for package in MANPAGE_PACKAGES[language] for text in _manual_pages(debs[package]))
            _write_jsonl(output_dir / f"{language}.jsonl", documents, budget, bar)
    return paths


def _write_jsonl(path: Path, documents: Iterator[str], budget: int, bar) -> None:
    """Write whole documents until ``budget`` bytes of text are reached (the last one may pass it),
    under a temporary name renamed when complete."""
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with tmp.open("w", encoding="utf-8") as file:
        for text in documents:
            if written >= budget:
                break
            file.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            size = len(text.encode("utf-8"))
            bar.update(min(size, budget - written))
            written += size
    bar.update(max(budget - written, 0))
    os.replace(tmp, path)


def _package_files(packages: list[str], folder: Path) -> dict[str, Path]:
    """The ``.deb`` of each package, downloaded into ``folder`` unless one is there already."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [package for package in packages if not list(folder.glob(f"{package}_*.deb"))]
    if missing:
        _download(missing, folder)
    return {package: sorted(folder.glob(f"{package}_*.deb"))[-1] for package in packages}


def _download(packages: list[str], folder: Path) -> None:
    command = ["apt-get", "download", *packages]
    fix = (
        f"on Debian or Ubuntu run `apt-get update` once (as root) so that `{' '.join(command)}` works, "
        f"or put those packages' .deb files in {folder}"
    )
    if shutil.which("apt-get") is None:
        raise UserError(f"the demo corpus needs Debian's manual-page packages and apt-get is missing: {fix}")
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise UserError(f"`{' '.join(command)}` failed ({detail}): {fix}")


def _manual_pages(deb: Path) -> Iterator[str]:
    """The plain text of each manual page of a ``.deb``, in archive order."""
    if shutil.which("dpkg-deb") is None:
        raise UserError("reading the manual-page packages needs dpkg-deb: install the `dpkg` package")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as process:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile() and "/share/man/" in member.name and member.name.endswith(".gz"):
                    roff = gzip.decompress(archive.extractfile(member).read()).decode("utf-8", "replace")
                    text = roff_to_text(roff)
                    if len(text) >= MIN_DOCUMENT_CHARS:
                        yield text
        process.stdout.close()
    if process.returncode:
        raise UserError(f"dpkg-deb could not read {deb}: delete it and build the corpus again")


def _python_sources() -> Iterator[str]:
    """The Python standard library's source files, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= MIN_DOCUMENT_CHARS:
            yield text


# Roff (man and mdoc macros) to plain text --------------------------------------------------------

_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d",
    "oq": "\u2018", "cq": "\u2019", "Fo": "\u00ab", "Fc": "\u00bb", "bu": "\u2022", "co": "\u00a9",
    "rg": "\u00ae", "ha": "^", "ti": "~", "rs": "\\", "mu": "\u00d7", "de": "\u00b0", ">=": "\u2265",
    "<=": "\u2264", "->": "\u2192", "<-": "\u2190", "dg": "\u2020", "Aq": "'", 'R"': "\u201d",
    'L"': "\u201c", "C'": "'", "C`": "`", "ga": "`", "at": "@", "sl": "/", "ba": "|", "lh": "<", "rh": ">",
}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327"}
_ESCAPE = re.compile(
    r"""\\(?:
        f(?:\[[^\]]*\]|\(..|.)            # font change
      | s(?:\[[^\]]*\]|\(\d\d|[-+]?\d)    # size change
      | [*](?:\[(?P<string>[^\]]*)\]|\((?P<string2>..)|(?P<string1>.))   # string
      | \[(?P<bracket>[^\]]*)\]           # named character
      | \((?P<paren>..)                   # two-letter character
      | [hvwoxlLbDRZ]'[^']*'              # motions, widths, drawing
      | [nmgkz](?:\[[^\]]*\]|\(..|.)      # registers, colours, marks
      | (?P<char>.)                       # one-character escape
    )""",
    re.VERBOSE,
)
_ARGUMENT = re.compile(r'"((?:[^"]|"")*)(?:"|$)|(\S+)')
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}
_INLINE = set("B I SM SB Nm Cm Ar Pa Fl Em Sy Li Ev Ic Va Dv Er Fn Fa Ft Nd Op".split())  # words joined by spaces
_ALTERNATING = set("BR RB IR RI BI IB".split())  # alternating fonts: words joined without spaces
_HEADINGS = set("SH SS Sh Ss".split())
_BREAKS = set("PP LP P Pp sp Sp br HP TP IP It nf fi EX EE Bl El Bd Ed".split())
_SKIPPED_BLOCKS = {"de": "..", "ig": "..", "TS": ".TE"}


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        for group in ("string", "string2", "string1", "bracket", "paren"):
            name = match[group]
            if name is not None:
                if re.fullmatch(r"u[0-9A-F]{4,6}", name):
                    return chr(int(name[1:], 16))
                if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
                    return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
                return _CHARS.get(name, "")
        return _SINGLE.get(match["char"] or "", "")

    return _ESCAPE.sub(replace, text)


def _arguments(line: str) -> list[str]:
    """A request's name and arguments: words, or double-quoted strings where ``""`` is a quote."""
    return [m[2] if m[1] is None else m[1].replace('""', '"') for m in _ARGUMENT.finditer(line)]


def roff_to_text(roff: str) -> str:
    """Plain text of a manual page: a title, then headings and paragraphs separated by blank lines."""
    paragraphs: list[str] = []
    lines: list[str] = []
    fill, skip_until, tag_next = True, None, False

    def flush() -> None:
        if lines:
            paragraphs.append(" ".join(lines) if fill else "\n".join(lines))
            lines.clear()

    def add(text: str) -> None:
        nonlocal tag_next
        lines.append(text)
        if tag_next:  # the tag of a .TP paragraph stands on its own line
            flush()
            tag_next = False

    for raw in roff.splitlines():
        if skip_until is not None:
            skip_until = None if raw.strip() == skip_until else skip_until
            continue
        raw = re.sub(r'\\".*', "", raw)
        if raw[:1] in (".", "'"):
            words = _arguments(raw[1:].strip())
            if not words:
                continue
            name, args = words[0], [_unescape(word) for word in words[1:]]
            if name in _SKIPPED_BLOCKS:
                skip_until = _SKIPPED_BLOCKS[name]
            elif name == "TH" and args:
                paragraphs.append(f"{args[0]}({args[1]})" if len(args) > 1 else args[0])
            elif name in _HEADINGS:
                flush()
                if args:
                    paragraphs.append(" ".join(args))
            elif name in _BREAKS:
                flush()
                fill = {"nf": False, "EX": False, "fi": True, "EE": True}.get(name, fill)
                tag_next = name == "TP"
                if name in ("IP", "It") and args:
                    lines.append(args[0] if name == "IP" else " ".join(args))
                    flush()
            elif name in _INLINE and args:
                add(" ".join(args))
            elif name in _ALTERNATING and args:
                add("".join(args))
            elif name == "Xr" and args:
                add(f"{args[0]}({args[1]})" if len(args) > 1 else args[0])
            continue
        text = _unescape(raw).rstrip()
        if text.strip():
            add(text.strip() if fill else text)
        elif fill:
            flush()
    flush()
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph.strip())
