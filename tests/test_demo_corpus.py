"""The demo corpus: roff to text, offline builds from .deb files, caching, errors, `lucie data demo-corpus`."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lucie_nemo.data import demo_corpus
from lucie_nemo.data.demo_corpus import LANGUAGES, MANPAGE_PACKAGES, build_demo_corpus, roff_to_text
from lucie_nemo.errors import UserError

PAGE = r""".\" A comment line
.TH DEMO 1 "2024-01-01" "lucie" "User Commands"
.SH NAME
demo \- a \fBsmall\fR page for the \fItests\fP
.SH DESCRIPTION
The first line of a paragraph
continues here, with \(lqquotes\(rq, \[em] dashes and \-\-long\-options.\" trailing comment
.PP
A second paragraph: caf\['e] \e backslash \(bu bullet.
.TP
.B \-v
Be verbose.
.IP "\-q" 4
Be quiet.
.nf
keep
  these lines
.fi
.de XX
ignored macro body
..
.SS "See also"
.BR ls (1),
.IR file .
"""
PAGE_TEXT = (
    "DEMO(1)\n\nNAME\n\ndemo - a small page for the tests\n\nDESCRIPTION\n\n"
    "The first line of a paragraph continues here, with “quotes”, — dashes and --long-options.\n\n"
    "A second paragraph: café \\ backslash • bullet.\n\n-v\n\nBe verbose.\n\n-q\n\nBe quiet.\n\n"
    "keep\n  these lines\n\nSee also\n\nls(1), file."
)


def test_roff_to_text() -> None:
    assert roff_to_text(PAGE) == PAGE_TEXT


def page(package: str) -> str:
    """A manual page naming its package, long enough to be kept."""
    return PAGE.replace("DEMO 1", f"{package.upper()} 7") + f".PP\nFrom {package}. " + "Some more words. " * 12 + "\n"


def make_deb(folder: Path, package: str) -> None:
    """A minimal .deb holding one gzipped manual page."""
    root = folder / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.org>\nDescription: test\n"
    )
    man = root / "usr" / "share" / "man" / "man7"
    man.mkdir(parents=True)
    (man / f"{package}.7.gz").write_bytes(gzip.compress(page(package).encode()))
    deb = folder / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)


@pytest.fixture()
def offline_corpus_dir(tmp_path: Path) -> Path:
    """An output folder whose debs/ already holds every package (nothing to download)."""
    debs = tmp_path / "corpus" / "debs"
    debs.mkdir(parents=True)
    for packages in MANPAGE_PACKAGES.values():
        for package in packages:
            make_deb(debs, package)
    return tmp_path / "corpus"


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_from_packages_and_python_sources(offline_corpus_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_corpus, "_download", lambda packages, folder: pytest.fail(f"downloaded {packages}"))
    paths = build_demo_corpus(offline_corpus_dir, max_mb=0.006, progress=False)

    assert paths == [offline_corpus_dir / f"{language}.jsonl" for language in LANGUAGES]
    for language, packages in MANPAGE_PACKAGES.items():
        assert read_texts(offline_corpus_dir / f"{language}.jsonl") == [roff_to_text(page(name)) for name in packages]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert read_texts(offline_corpus_dir / "code.jsonl") == [(stdlib / "__future__.py").read_text(encoding="utf-8")]


def test_a_second_build_reuses_the_files_unless_the_size_changes(offline_corpus_dir: Path) -> None:
    paths = build_demo_corpus(offline_corpus_dir, max_mb=0.006, progress=False)
    written = {path: path.stat().st_mtime_ns for path in paths}
    (offline_corpus_dir / "fr.jsonl").unlink()
    build_demo_corpus(offline_corpus_dir, max_mb=0.006, progress=False)
    assert {path: path.stat().st_mtime_ns for path in paths if path.name != "fr.jsonl"} == {
        path: mtime for path, mtime in written.items() if path.name != "fr.jsonl"
    }
    assert (offline_corpus_dir / "fr.jsonl").is_file()

    build_demo_corpus(offline_corpus_dir, max_mb=0.012, progress=False)
    assert all(path.stat().st_mtime_ns != written[path] for path in paths)
    assert json.loads((offline_corpus_dir / "demo_corpus.json").read_text())["max_mb"] == 0.012


def test_missing_apt_get_names_the_packages_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_corpus.shutil, "which", lambda name: None)
    fix = r"apt-get is missing: .*apt-get update.*apt-get download manpages manpages-dev manpages-fr"
    with pytest.raises(UserError, match=fix):
        build_demo_corpus(tmp_path, max_mb=0.006, progress=False)
    with pytest.raises(UserError, match=r"must be positive"):
        build_demo_corpus(tmp_path, max_mb=0, progress=False)


def test_cli_builds_the_corpus(offline_corpus_dir: Path) -> None:
    from lucie_nemo.cli.data import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["data", "demo-corpus", str(offline_corpus_dir), "--max-mb", "0.006"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(offline_corpus_dir / f"{language}.jsonl") for language in LANGUAGES]


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get and access to Debian's package archive")
def test_real_packages_give_text_in_each_language(tmp_path: Path) -> None:
    paths = build_demo_corpus(tmp_path, max_mb=0.03, progress=False)  # needs apt-get and Debian's archive
    markers = {"en": " the ", "fr": " les ", "de": " die ", "es": " los ", "it": " il ", "code": "def "}
    for language, path in zip(LANGUAGES, paths):
        texts = read_texts(path)
        assert texts and all(len(text) >= demo_corpus.MIN_DOCUMENT_CHARS for text in texts)
        assert markers[language] in " ".join(texts)
