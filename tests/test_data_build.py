"""`lucie data build PHASE`: a miniature public dataset on a fake Hub, downloaded and tokenized into a data
root, interrupted and resumed to the same bytes; phase 2's split; bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from fake_hub import DatasetHub, miniature_lucie_branches, miniature_lucie_dataset, parquet_bytes
from lucie_nemo.cli.data import data_app
from lucie_nemo.data import prepare
from lucie_nemo.data.blends import original_counts
from lucie_nemo.data.build import BuildConfig, BuildTask, compare_with_original
from lucie_nemo.data.sources import DATASET
from original_rules import original_ids

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
NATURAL = "data/v1.1/natural"
ONLY = ("RedPajama--fr--2019", "Claire--en--MediaSum", "TheStack--python", "Persee")
GROUPED = "lucie_tokens_65k_grouped"


@pytest.fixture()
def hub(dataset_hub):
    return dataset_hub


def build(hub: DatasetHub, phase: str, root: Path, *only: str, step: str = "all"):
    arguments = ["build", phase, "--data-root", str(root), "--tokenizer", str(TOKENIZER), "--endpoint", hub.url,
                 "--workers", "1", "--no-progress", "--step", step, *(f"--only={name}" for name in only)]
    return CliRunner().invoke(data_app, arguments)


def texts(files: dict[str, bytes], path: str) -> list[str]:
    return pq.read_table(io.BytesIO(files[path])).column("text").to_pylist()


def read_dataset(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


class Interrupted(Exception):
    pass


def test_build_interrupted_and_resumed_gives_the_same_bytes(hub, tmp_path, monkeypatch):
    reference = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    files = miniature_lucie_dataset()
    root = tmp_path / "root"

    finish = prepare._PartWriter.finish
    finished: list[str] = []

    def finish_then_stop(self, input_path: Path) -> None:  # killed after the first file of RedPajama--fr--2019
        finish(self, input_path)
        finished.append(input_path.name)
        if input_path.name == "RedPajama--fr--2019-04.parquet":
            raise Interrupted

    monkeypatch.setattr(prepare._PartWriter, "finish", finish_then_stop)
    result = build(hub, "pretrain", root, *ONLY)
    assert isinstance(result.exception, Interrupted), result.output
    monkeypatch.setattr(prepare._PartWriter, "finish", finish)

    result = build(hub, "pretrain", root, *ONLY)
    assert result.exit_code == 0, result.output
    assert "skipped lucie_tokens_65k_grouped/Persee_text_document: Persee was used in training but is not in " \
           "the public release" in result.output
    assert f"built: {GROUPED}/RedPajama--fr--2019_text_document" in result.output

    rp = [f"{NATURAL}/fr/RedPajama/RedPajama--fr--2019-04.parquet", f"{NATURAL}/fr/RedPajama/RedPajama--fr--2019-09.parquet"]
    expected = [original_ids(reference, text) for path in rp for text in texts(files, path)]  # in file order
    assert read_dataset(root / GROUPED / "RedPajama--fr--2019_text_document") == expected
    claire = pq.read_table(io.BytesIO(files[f"{NATURAL}/en/Claire/Claire--en.parquet"])).to_pylist()
    mediasum = [row["text"] for row in claire if json.loads(row["extra"])["subset"] == "MediaSum"]
    assert len(mediasum) == 3
    assert read_dataset(root / GROUPED / "Claire--en--MediaSum_text_document") == [
        original_ids(reference, text) for text in mediasum]
    stats = json.loads((root / GROUPED / "TheStack--python_text_document.stats.json").read_text())
    assert (stats["documents"], stats["empty_documents"]) == (3, 1)

    counts = original_counts("pretrain")
    for name in ("RedPajama--fr--2019", "Claire--en--MediaSum", "TheStack--python"):
        prefix = f"{GROUPED}/{name}_text_document"
        stats = json.loads((root / f"{prefix}.stats.json").read_text())
        documents, tokens = counts[prefix]
        assert (f"differs from the original run: {prefix}: {stats['documents']:,} documents, {stats['tokens']:,} "
                f"tokens (original: {documents:,}, {tokens:,})") in result.output.splitlines()
    assert "0 of 3 built prefixes have the original run's document and token counts" in result.output

    blend = (root / "blend-pretrain.txt").read_text().split()
    assert blend[1::2] == [f"{GROUPED}/{name}_text_document" for name in
                           ("RedPajama--fr--2019", "TheStack--python", "Claire--en--MediaSum")]  # the blend's order
    assert abs(sum(map(float, blend[::2])) - 1) < 1e-12

    again = build(hub, "pretrain", root, *ONLY)  # everything complete: nothing downloaded or tokenized again
    assert again.exit_code == 0 and "built:" not in again.output
    assert again.output.count("complete: ") == 3

    straight = tmp_path / "straight"
    assert build(hub, "pretrain", straight, *ONLY).exit_code == 0
    outputs = sorted(path.relative_to(root) for path in (root / GROUPED).iterdir() if path.suffix in (".bin", ".idx"))
    assert len(outputs) == 6
    for path in outputs:
        assert (root / path).read_bytes() == (straight / path).read_bytes(), path


def test_phase_2_splits_at_4096_tokens(hub, tmp_path):
    root = tmp_path / "root"
    result = build(hub, "extension", root, "Claire--en--MediaSum")
    assert result.exit_code == 0, result.output
    splitted = root / "lucie_tokens_65k_splitted"
    short = json.loads((splitted / "length-0-4096" / "Claire--en--MediaSum_text_document.stats.json").read_text())
    long = json.loads((splitted / "length-4096-inf" / "Claire--en--MediaSum_text_document.stats.json").read_text())
    assert (short["documents"], short["document_tokens"], long["documents"], long["document_tokens"]) == (
        3, "<= 4096", 0, "> 4096")
    assert (root / "blend-extension.txt").read_text().split()[1::2] == [  # the blend's order: increasing weight
        "lucie_tokens_65k_splitted/length-0-4096/Claire--en--MediaSum_text_document",
        "lucie_tokens_65k_splitted/length-4096-inf/Claire--en--MediaSum_text_document",
    ]


def test_the_extension_builds_gallica_monographies_from_the_v1_2_branch(hub, tmp_path):
    reference = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    root = tmp_path / "root"
    result = build(hub, "extension", root, "GallicaMonographies")
    assert result.exit_code == 0, result.output
    v12 = miniature_lucie_branches()["v1.2"]
    expected = [original_ids(reference, text)
                for text in texts(v12, "data/v1.2/natural/fr/GallicaMonographies/GallicaMonographies.parquet")]
    short = "lucie_tokens_65k_splitted/length-0-4096/GallicaMonographies_text_document"
    assert read_dataset(root / short) == expected
    assert (root / ".build" / "hub" / f"{DATASET.replace('/', '--')}@v1.2").is_dir()
    tokens = sum(map(len, expected))
    assert f"differs from the original run: {short}: 3 documents, {tokens:,} tokens (original: 26,418, 58,761,697)" \
        in result.output.splitlines()
    assert "0 of 2 built prefixes have the original run's document and token counts" in result.output


def test_bad_input_is_one_error_line(hub, tmp_path):
    files = miniature_lucie_dataset()
    files[f"{NATURAL}/fr/YouTube/YouTube--fr.parquet"] = parquet_bytes({"content": ["pas de colonne text"]})
    hub.add_dataset(DATASET, files)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    cases = [
        (build(hub, "nophase", tmp_path / "a"), "error: unknown phase 'nophase'"),
        (build(hub, "pretrain", tmp_path / "a", "Nowhere"), "error: prefix 'Nowhere' is not in the pretrain blend"),
        (build(hub, "pretrain", not_a_folder / "root", "Wikipedia--fr"), f"error: data root {not_a_folder / 'root'} "
                                                                          "is not writable"),
        (build(hub, "pretrain", tmp_path / "b", "ValidatedYouTube--fr"), "error: Parquet file "),
    ]
    for result, message in cases:
        assert result.exit_code == 2, result.output
        assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert "has no column 'text' (columns: content): re-download it (delete it and rerun) or check --revision" \
        in cases[-1][0].output  # a fix `data build` has (it has no --text-field)


def test_steps_build_the_datasets_then_write_the_blend(hub, tmp_path):
    """The cluster's jobs: `--step datasets` builds without a blend file, `--step blend` builds nothing."""
    root = tmp_path / "root"
    early = build(hub, "anneal", root, "Wikipedia--fr", step="blend")
    assert early.exit_code == 2 and early.output.startswith(
        f"error: 1 dataset(s) of the anneal blend are not built, e.g. {GROUPED}/Wikipedia--fr_text_document"), early.output
    assert not (root / GROUPED).exists()
    datasets = build(hub, "anneal", root, "Wikipedia--fr", step="datasets")
    assert datasets.exit_code == 0 and f"built: {GROUPED}/Wikipedia--fr_text_document" in datasets.output
    assert not (root / "blend-anneal.txt").exists()
    blend = build(hub, "anneal", root, "Wikipedia--fr", step="blend")
    assert blend.exit_code == 0 and "built:" not in blend.output, blend.output
    assert (root / "blend-anneal.txt").read_text() == f"1.0 {GROUPED}/Wikipedia--fr_text_document\n"


def test_the_count_check_names_every_mismatch(tmp_path):
    counts = original_counts("pretrain")
    same, other = (f"{GROUPED}/{name}_text_document" for name in ("Stac", "Europarl--fr"))
    for prefix, extra_tokens in ((same, 0), (other, 1)):  # the second: the original's documents, one token more
        documents, tokens = counts[prefix]
        path = tmp_path / f"{prefix}.stats.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"documents": documents, "tokens": tokens + extra_tokens}))
    tasks = [BuildTask(prefix, None, (), (), 0, (prefix,)) for prefix in (same, other)]
    lines: list[str] = []
    compare_with_original(BuildConfig("pretrain", tmp_path, str(TOKENIZER)), tasks, lines.append)
    documents, tokens = counts[other]
    assert lines == [f"differs from the original run: {other}: {documents:,} documents, {tokens + 1:,} tokens "
                     f"(original: {documents:,}, {tokens:,})",
                     "1 of 2 built prefixes have the original run's document and token counts"]
    lines.clear()
    compare_with_original(BuildConfig("anneal", tmp_path, str(TOKENIZER)), tasks, lines.append)
    assert lines == ["no document or token counts of the original anneal datasets to compare with"]
