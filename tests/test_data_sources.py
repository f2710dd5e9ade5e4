"""`lucie data sources PHASE`: the blend's prefixes resolved against a miniature public dataset on a fake Hub."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lucie_nemo.cli.data import data_app
from lucie_nemo.data.sources import DATASET, dataset_name, list_dataset_files, phase_sources
from lucie_nemo.errors import UserError

NATURAL = "data/v1.1/natural"


@pytest.fixture()
def hub(dataset_hub):
    return dataset_hub


def by_name(report) -> dict:
    return {source.name: source for source in report.sources}


def test_prefixes_resolve_to_the_files_of_the_original_names_and_groups(hub):
    files = list_dataset_files(endpoint=hub.url)
    report = phase_sources("pretrain", files)
    sources = by_name(report)

    assert len(report.sources) == 140
    assert sources["RedPajama--fr--2019"].files == [  # the year's snapshots, in sorted file order
        f"{NATURAL}/fr/RedPajama/RedPajama--fr--2019-04.parquet",
        f"{NATURAL}/fr/RedPajama/RedPajama--fr--2019-09.parquet",
    ]
    assert sources["RedPajama--fr--2020"].files == [f"{NATURAL}/fr/RedPajama/RedPajama--fr--2020-05.parquet"]
    assert sources["FineWebEdu--cc-main-2019"].files == [
        f"{NATURAL}/en/FineWebEdu/FineWebEdu--cc-main-2019-04.parquet",
        f"{NATURAL}/en/FineWebEdu/FineWebEdu--cc-main-2019-18.parquet",
    ]
    for subset in ("MediaSum", "AMI", "BNC"):
        claire = sources[f"Claire--en--{subset}"]
        assert claire.files == [f"{NATURAL}/en/Claire/Claire--en.parquet"] and claire.row_filter == {"subset": subset}
    assert sources["ValidatedYouTube--fr"].files == [f"{NATURAL}/fr/YouTube/YouTube--fr.parquet"]
    assert sources["TheStack--python"].files == ["data/v1.1/code/python/TheStack/TheStack--python.parquet"]
    assert sources["Wikipedia--fr"].files == [f"{NATURAL}/fr/Wikipedia/Wikipedia--fr.parquet"]
    assert sources["Wikipedia--fr"].bytes == files[f"{NATURAL}/fr/Wikipedia/Wikipedia--fr.parquet"]
    assert sources["PeS2o"].files == [] and sources["PeS2o"].missing == (
        f"no file {NATURAL}/en/PeS2o/<.*>.parquet at main"
    )
    assert sources["Persee"].missing == "Persee was used in training but is not in the public release"
    found = {name for name, source in sources.items() if source.files}
    claire_en = {f"Claire--en--{s}" for s in ("AMI", "BNC", "DailyDialog", "DialogStudio", "ICSI", "MediaSum", "OANC")}
    assert found == claire_en | {"RedPajama--fr--2019", "RedPajama--fr--2020", "FineWebEdu--cc-main-2019",
                                 "ValidatedYouTube--fr", "TheStack--python", "Wikipedia--fr"}
    assert report.unused_files == [f"{NATURAL}/fr/Unknown/Unknown--fr.parquet"]  # v1.2 and README not counted


def test_the_file_list_is_cached_per_endpoint_and_revision(hub, tmp_path):
    files = list_dataset_files(endpoint=hub.url)
    asked = len(hub.requests)
    assert asked >= 1 and all("/tree/main" in request.path for request in hub.requests)
    hub.datasets.clear()  # the Hub forgets the dataset: the cached list still answers
    assert list_dataset_files(endpoint=hub.url) == files and len(hub.requests) == asked
    host = hub.url.split("://")[1].replace(":", "-")
    cached = tmp_path / "cache" / "hub-files" / host / f"{DATASET.replace('/', '--')}@main.json"
    assert json.loads(cached.read_text()) == files


def test_renormalize_shares_the_missing_weight(hub):
    files = list_dataset_files(endpoint=hub.url)
    plain, renormalized = phase_sources("pretrain", files), phase_sources("pretrain", files, renormalize=True)
    present = [source.weight for source in plain.sources if source.files]
    assert math.isclose(math.fsum(s.weight for s in renormalized.sources), 1.0, rel_tol=1e-12)
    for before, after in zip(plain.sources, renormalized.sources):
        assert after.weight == (before.weight / math.fsum(present) if before.files else 0.0)


def test_extension_and_anneal_prefixes(hub):
    files = list_dataset_files(endpoint=hub.url)
    extension = phase_sources("extension", files)
    assert len(extension.sources) == 224
    names = {source.prefix: source for source in extension.sources}
    claire = names["lucie_tokens_65k_splitted/length-4096-inf/Claire--en--MediaSum_text_document"]
    assert claire.files == [f"{NATURAL}/en/Claire/Claire--en.parquet"]
    anneal = by_name(phase_sources("anneal", files))
    assert len(anneal) == 14 and anneal["Wikipedia--fr"].files and not anneal["OpenWebMath--en"].files


def test_extension_reads_the_ocr_filtered_v1_2_data_on_its_branch(hub):
    files = list_dataset_files(endpoint=hub.url)

    def files_at(branch: str) -> dict[str, int]:
        return list_dataset_files(revision=branch, endpoint=hub.url)

    extension = {source.prefix: source for source in phase_sources("extension", files, files_at=files_at).sources}
    for part in ("length-0-4096", "length-4096-inf"):
        gallica = extension[f"lucie_tokens_65k_splitted/{part}/GallicaMonographies_text_document"]
        assert (gallica.version, gallica.revision) == ("v1.2", "v1.2")
        assert gallica.files == ["data/v1.2/natural/fr/GallicaMonographies/GallicaMonographies.parquet"]
        ubuntu = extension[f"lucie_tokens_65k_splitted/{part}/Pile--Ubuntu_IRC_text_document"]
        assert ubuntu.files == ["data/v1.2/natural/en/Pile/Pile--Ubuntu_IRC.parquet"]
        press = extension[f"lucie_tokens_65k_splitted/{part}/GallicaPress--html_text_document"]
        assert press.missing == "no file data/v1.2/natural/fr/GallicaPress/<GallicaPress\\-\\-html(--.*)?>.parquet at v1.2"
        same = extension[f"lucie_tokens_65k_splitted/{part}/GallicaPress--txt_text_document"]  # 1,460,734 in both
        assert (same.version, same.revision) == ("v1.1", "main")
    pretrain = by_name(phase_sources("pretrain", files, files_at=files_at))
    assert (pretrain["GallicaMonographies"].version, pretrain["GallicaMonographies"].revision) == ("v1.1", "main")
    assert pretrain["GallicaMonographies"].files == []

    def no_branch(branch: str) -> dict[str, int]:
        raise UserError(f"dataset {DATASET} has no revision {branch!r}: pass an existing --revision")

    missing = {source.prefix: source for source in phase_sources("extension", files, files_at=no_branch).sources}
    gallica = missing["lucie_tokens_65k_splitted/length-0-4096/GallicaMonographies_text_document"]
    assert gallica.missing == f"dataset {DATASET} has no revision 'v1.2': pass an existing --revision"


def test_numbered_parts_are_taken_in_their_numeric_order():
    folder = f"{NATURAL}/en/FineWebEdu/FineWebEdu--cc-main-2019"
    files = {f"{folder}-04--{part}.parquet": 1 for part in (10, 2, 0, 1, 11)} | {f"{folder}-13--0.parquet": 1}
    inca = f"{NATURAL}/fr/OpenData/OpenData--inca_opendata"
    files |= {f"{inca}-2.parquet": 1, f"{inca}-1.parquet": 1, f"{NATURAL}/fr/OpenData/OpenData--balo_opendata.parquet": 1}
    sources = by_name(phase_sources("pretrain", files, only=("FineWebEdu--cc-main-2019", "OpenData--inca_opendata",
                                                             "OpenData--balo_opendata")))
    assert sources["FineWebEdu--cc-main-2019"].files == [f"{folder}-04--{part}.parquet" for part in (0, 1, 2, 10, 11)] \
        + [f"{folder}-13--0.parquet"]
    assert sources["OpenData--inca_opendata"].files == [f"{inca}-1.parquet", f"{inca}-2.parquet"]
    assert sources["OpenData--balo_opendata"].files == [f"{NATURAL}/fr/OpenData/OpenData--balo_opendata.parquet"]


def test_the_annealing_mathpile_is_not_public():
    files = {f"{NATURAL}/en/MathPile/MathPile--arXiv.parquet": 1, f"{NATURAL}/en/MathPile/MathPile--wikipedia.parquet": 1}
    anneal = by_name(phase_sources("anneal", files))
    assert anneal["MathPile"].files == []
    assert anneal["MathPile"].missing == ("the annealing phase's MathPile was not released in this dataset "
                                          "(phase 1's MathPile--* subsets are)")
    assert by_name(phase_sources("pretrain", files, only=("MathPile--arXiv",)))["MathPile--arXiv"].files == [
        f"{NATURAL}/en/MathPile/MathPile--arXiv.parquet"]


def run(*arguments: str):
    return CliRunner().invoke(data_app, ["sources", *arguments])


def test_cli_text_and_json(hub):
    result = run("pretrain", "--endpoint", hub.url, "--only", "RedPajama--fr--2019", "--only", "Persee")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(
        "lucie_tokens_65k_grouped/RedPajama--fr--2019_text_document: 2 file(s), 0.00 GB in "
        "data/v1.1/natural/fr/RedPajama"
    )
    assert lines[1].endswith("Persee_text_document: MISSING: Persee was used in training but is not in the public "
                             "release")
    assert lines[2] == "unused: data/v1.1/code/python/TheStack/TheStack--python.parquet"  # sorted
    assert f"1 of 2 prefixes found in {DATASET}@main" in result.output
    assert "--renormalize shares it among the others" in result.output

    result = run("pretrain", "--endpoint", hub.url, "--json", "--renormalize", "--only", "Claire--en--AMI",
                 "--only", "lucie_tokens_65k_grouped/Persee_text_document")
    report = json.loads(result.output)
    assert [(s["name"], s["weight"], s["row_filter"]) for s in report["sources"]] == [
        ("Persee", 0.0, None), ("Claire--en--AMI", 1.0, {"subset": "AMI"})]  # in the blend's order
    assert report["unmatched_prefixes"] == ["lucie_tokens_65k_grouped/Persee_text_document"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_input_is_one_error_line(hub, tmp_path):
    cases = [
        (("nophase", "--endpoint", hub.url), "error: unknown phase 'nophase': choose one of"),
        (("pretrain", "--endpoint", hub.url, "--only", "Nowhere"),
         "error: prefix 'Nowhere' is not in the pretrain blend"),
        (("pretrain", "--endpoint", f"http://127.0.0.1:{free_port()}"), "error: cannot reach http://127.0.0.1:"),
        (("pretrain", "--endpoint", hub.url, "--revision", "v9"),
         f"error: dataset {DATASET} has no revision 'v9'"),
        (("pretrain", "--endpoint", hub.url, "--dataset", "someone/else"), "error: dataset someone/else not found on"),
    ]
    for arguments, message in cases:
        result = run(*arguments)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def test_dataset_name():
    assert dataset_name("lucie_tokens_65k_grouped/RedPajama--fr--2019_text_document") == "RedPajama--fr--2019"
