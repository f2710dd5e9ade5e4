"""Phase data blends from the original blend files, their validation, and `lucie data blend`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path, PurePosixPath

import pytest
from conftest import needs_shared
import typer
from typer.testing import CliRunner

from lucie_nemo.data.blends import BLEND_FILES, Blend, original_counts, phase_blend, read_blend_file, validate_blend
from lucie_nemo.data.sources import PHASE_VERSIONS
from lucie_nemo.errors import UserError

ORIGINALS = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "data"
pytestmark = needs_shared
ROOT = Path("/data/lucie")
ANNEALING = [
    (0.200, "lucie_tokens_65k_annealing/OpenWebMath--en_text_document"),
    (0.100, "lucie_tokens_65k_grouped/PeS2o_text_document"),
    (0.250, "lucie_tokens_65k_annealing_grouped/MathPile_text_document"),
    (0.040, "lucie_tokens_65k_grouped/Wikipedia--fr_text_document"),
    (0.040, "lucie_tokens_65k_grouped/Wikipedia--en_text_document"),
    (0.007, "lucie_tokens_65k_grouped/Wikipedia--es_text_document"),
    (0.007, "lucie_tokens_65k_grouped/Wikipedia--it_text_document"),
    (0.006, "lucie_tokens_65k_grouped/Wikipedia--de_text_document"),
    (0.050, "lucie_tokens_65k_annealing/StackMathQA--en_text_document"),
    (0.066, "lucie_tokens_65k_annealing/Aya--fr_text_document"),
    (0.012, "lucie_tokens_65k_annealing/Aya--es_text_document"),
    (0.012, "lucie_tokens_65k_annealing/Aya--it_text_document"),
    (0.010, "lucie_tokens_65k_annealing/Aya--de_text_document"),
    (0.200, "lucie_tokens_65k_annealing_grouped/Flanv2--en_text_document"),
]


def rows(name: str) -> list[dict[str, str]]:
    with (BLEND_FILES / name).open(newline="") as file:
        return list(csv.DictReader(file))


def by_subset(name: str) -> dict[str, dict[str, str]]:
    """Rows keyed by their prefix's name without ``_text_document``."""
    return {row["prefix"].split("/")[-1].removesuffix("_text_document"): row for row in rows(name)}


def make_datasets(blend: Blend) -> None:
    for prefix in blend.prefixes:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        Path(prefix + ".bin").write_bytes(b"")
        Path(prefix + ".idx").write_bytes(b"")


@pytest.mark.parametrize(
    "name", ["training_weights.csv", "training_weights_short.csv", "training_weights_long.csv", "annealing_mix.txt"]
)
def test_embedded_blend_files_are_the_originals(name: str) -> None:
    assert (BLEND_FILES / name).read_bytes() == (ORIGINALS / name).read_bytes()


def test_pretrain_blend_has_one_entry_per_csv_row_with_its_new_ratio_printed_with_9_decimals() -> None:
    blend = phase_blend("pretrain", ROOT)
    table = rows("training_weights.csv")
    assert len(blend.prefixes) == len(table) == 140
    assert blend.prefixes == [str(ROOT / row["prefix"]) for row in table]
    assert blend.weights == [round(float(row["new_ratio"]), 9) for row in table]
    assert blend.weights[:2] == [0.052346326, 0.050133587]  # chronicles/pretrain/1_pretraining/training_weights_option.txt
    assert math.fsum(blend.weights) == pytest.approx(1.000000001, abs=1e-15)
    assert blend.to_megatron() == (blend.prefixes, blend.weights)


def test_extension_blend_weights_long_documents_ten_times() -> None:
    blend = phase_blend("extension", ROOT)
    weights = dict(zip(blend.prefixes, blend.weights))
    short, long = by_subset("training_weights_short.csv"), by_subset("training_weights_long.csv")
    main = {name: float(row["new_ratio"]) for name, row in by_subset("training_weights.csv").items()}
    # The original printed the weights with 9 decimals by increasing weight (collect_data_and_weights_extension.py)
    # and left out three tiny short parts (printing as 0.000000000).
    dropped = {"Claire--en--ICSI", "Claire--fr--CFPP", "Claire--fr--LINAGORA"}
    assert len(blend.prefixes) == len(short) + len(long) - len(dropped) == 224
    assert blend.weights == sorted(blend.weights) and blend.weights[0] == 1e-9
    assert all(weight == round(weight, 9) for weight in blend.weights)
    assert math.fsum(blend.weights) == pytest.approx(1.000000001, abs=1e-15)

    def share(name: str, parent: float) -> tuple[float, float]:
        short_count = float(short[name]["reweighted_count"]) if name in short else 0.0
        long_count = 10 * float(long[name]["reweighted_count"]) if name in long else 0.0
        return parent * long_count / (short_count + long_count), parent * short_count / (short_count + long_count)

    # Subsets kept whole in phase 1: their weight splits between long and short parts.
    for name in ("PeS2o", "Wikipedia--fr", "TheStack--javascript", "Claire--fr--Senat", "Claire--en--DailyDialog"):
        long_weight, short_weight = share(name, main[name])
        if name in long:
            assert weights[str(ROOT / long[name]["prefix"])] == round(long_weight, 9)
        if name in short:
            assert weights[str(ROOT / short[name]["prefix"])] == round(short_weight, 9)
    # Yearly web subsets were split as one: the sum of their phase-1 weights is shared.
    finewebedu = sum(weight for name, weight in main.items() if name.startswith("FineWebEdu--"))
    long_weight, short_weight = share("FineWebEdu--cc-main-2024", finewebedu)
    prefix = "lucie_tokens_65k_splitted/length-{}/FineWebEdu--cc-main-2024_text_document"
    assert weights[str(ROOT / prefix.format("4096-inf"))] == round(long_weight, 9)
    assert weights[str(ROOT / prefix.format("0-4096"))] == round(short_weight, 9)
    assert not any(f"/length-0-4096/{name}_text_document" in prefix for prefix in blend.prefixes for name in dropped)
    long_total = sum(weight for prefix, weight in weights.items() if "/length-4096-inf/" in prefix)
    assert long_total == pytest.approx(0.7467, abs=1e-4)


def test_anneal_blend_keeps_the_files_weights_and_dataset_folders() -> None:
    blend = phase_blend("anneal", ROOT)
    assert len(blend.prefixes) == 14
    assert blend.weights == [weight for weight, _ in ANNEALING]
    assert blend.prefixes == [str(ROOT / prefix) for _, prefix in ANNEALING]
    assert math.fsum(blend.weights) == pytest.approx(1, abs=1e-12)


def test_user_blend_files(tmp_path: Path) -> None:
    pairs = tmp_path / "mix.txt"
    pairs.write_text("0.25 web/fr_text_document\n0.75 /cluster/data/tokens/code_text_document\n")
    assert read_blend_file(pairs) == [("web/fr_text_document", 0.25), ("tokens/code_text_document", 0.75)]
    assert phase_blend("anneal", tmp_path, pairs).prefixes == [
        str(tmp_path / "web/fr_text_document"),
        str(tmp_path / "tokens/code_text_document"),
    ]
    table = tmp_path / "weights.csv"
    table.write_text("prefix,new_ratio\na_text_document,0.5\nb_text_document,0.5\n")
    assert phase_blend("pretrain", tmp_path, table).weights == [0.5, 0.5]

    odd = tmp_path / "odd.txt"
    odd.write_text("0.5 a 0.5")
    with pytest.raises(UserError, match=r"must hold WEIGHT PATH pairs .* got 3 words"):
        read_blend_file(odd)
    bad = tmp_path / "bad.txt"
    bad.write_text("half a_text_document")
    with pytest.raises(UserError, match=r"weight 'half' of a_text_document is not a number"):
        read_blend_file(bad)
    no_ratio = tmp_path / "no_ratio.csv"
    no_ratio.write_text("prefix,ratio\na,1\n")
    with pytest.raises(UserError, match=r"has no 'new_ratio' column"):
        read_blend_file(no_ratio)
    with pytest.raises(UserError, match=r"blend file .*missing\.txt does not exist"):
        read_blend_file(tmp_path / "missing.txt")
    folder = tmp_path / "phase2"
    folder.mkdir()
    (folder / "training_weights.csv").write_text(table.read_text())
    with pytest.raises(UserError, match=r"phase-2 blend folder .*phase2 has no training_weights_short\.csv"):
        read_blend_file(folder)
    with pytest.raises(UserError, match=r"unknown phase 'cooldown'"):
        phase_blend("cooldown", tmp_path)


def test_validate_blend_accepts_a_complete_blend(tmp_path: Path) -> None:
    blend = phase_blend("anneal", tmp_path)
    make_datasets(blend)
    validate_blend(blend)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, 0.5, 0.0], r"blend weight 0\.0 of .*/c is not positive: give it a positive weight or drop it"),
        ([0.75, 0.5, -0.25], r"blend weight -0\.25 of .*/c is not positive"),
        ([0.5, 0.5, float("nan")], r"blend weight nan of .*/c is not positive"),
        ([0.5, 0.3, 0.1], r"sum to 0\.900000000, not 1 \(tolerance 1e-06\): divide each weight by 0\.900000000"),
    ],
)
def test_validate_blend_refuses_bad_weights(tmp_path: Path, weights: list[float], message: str) -> None:
    blend = Blend([str(tmp_path / name) for name in "abc"], weights)
    make_datasets(blend)
    with pytest.raises(UserError, match=message):
        validate_blend(blend)


def test_validate_blend_tolerates_rounding_below_1e_6(tmp_path: Path) -> None:
    blend = Blend([str(tmp_path / "a"), str(tmp_path / "b")], [0.5, 0.5 + 9e-7])
    make_datasets(blend)
    validate_blend(blend)


def test_validate_blend_refuses_duplicates_missing_files_and_empty_blends(tmp_path: Path) -> None:
    duplicated = Blend([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a")], [0.25, 0.5, 0.25])
    make_datasets(duplicated)
    with pytest.raises(UserError, match=r"prefix .*/a appears 2 times in the blend: merge its entries into one"):
        validate_blend(duplicated)

    blend = Blend([str(tmp_path / "a"), str(tmp_path / "missing")], [0.5, 0.5])
    with pytest.raises(UserError, match=r"2 blend dataset file\(s\) missing: .*/missing\.bin, .*/missing\.idx: point"):
        validate_blend(blend)
    (tmp_path / "missing.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"1 blend dataset file\(s\) missing: .*/missing\.idx:"):
        validate_blend(blend)

    with pytest.raises(UserError, match=r"the blend is empty"):
        validate_blend(Blend([], []))
    with pytest.raises(UserError, match=r"one weight per prefix, got 2 and 1"):
        Blend(["a", "b"], [1.0])


def test_cli_prints_and_checks_a_blend(tmp_path: Path) -> None:
    from lucie_nemo.cli.data import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["data", "blend", "anneal", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    blend = phase_blend("anneal", tmp_path)
    assert json.loads(result.stdout) == {"prefixes": blend.prefixes, "weights": blend.weights}

    result = CliRunner().invoke(app, ["data", "blend", "anneal", "--data-root", str(tmp_path), "--check"])
    assert result.exit_code == 2
    assert "28 blend dataset file(s) missing" in result.output

    make_datasets(blend)
    result = CliRunner().invoke(app, ["data", "blend", "anneal", "--data-root", str(tmp_path), "--check"])
    assert result.exit_code == 0, result.output


def test_original_counts_put_the_extension_on_v1_2_exactly_where_phase_2_counts_differ() -> None:
    """The phase-2 CSVs' documents (short + long) differ from phase 1's for the four OCR-filtered v1.2 sources
    and no other: the sources `lucie data sources extension` reads on the v1.2 branch."""
    pretrain, extension = original_counts("pretrain"), original_counts("extension")
    phase1 = {PurePosixPath(prefix).name: documents for prefix, (documents, _) in pretrain.items()}
    phase2: dict[str, int] = {}
    for prefix, (documents, _) in extension.items():
        phase2[PurePosixPath(prefix).name] = phase2.get(PurePosixPath(prefix).name, 0) + documents
    differ = {name.removesuffix("_text_document"): (phase1[name], documents)
              for name, documents in phase2.items() if phase1[name] != documents}
    assert differ == {"GallicaMonographies": (277_729, 220_351), "GallicaPress--html": (1_747_558, 989_114),
                      "Pile--Ubuntu_IRC": (10_368, 9_007), "Pile--PhilPapers": (30_773, 28_106)}
    assert set(differ) == set(PHASE_VERSIONS["extension"])
    assert {version.version for version in PHASE_VERSIONS["extension"].values()} == {"v1.2"}
    assert phase2["GallicaPress--txt_text_document"] == phase1["GallicaPress--txt_text_document"] == 1_460_734
    assert original_counts("anneal") == {}
