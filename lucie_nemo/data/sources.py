"""Where each dataset prefix of a phase's blend comes from in the public dataset
``OpenLLM-France/Lucie-Training-Dataset``.

The public dataset holds Parquet files ``data/v1.1/{natural|code}/{LANGUAGE}/{Source}/{NAME}.parquet``
(Lucie-Training ``assets/hugging_face/hf_upload_dataset.py``); a blend prefix
``FOLDER/NAME_text_document`` names an original dataset with ``:`` written ``--``
(``tokenization/tokenizer_apply.py``), the RedPajama and FineWebEdu snapshots of one year concatenated
into one prefix in sorted file order (``tokenization/dataset_concat.py``). `hub_rule` turns a prefix name
into the folder and file names it reads, with the original renames (the upload script's
``to_source_and_id_func``): ``ValidatedYouTube`` -> ``YouTube``, ``Wikiother--fr--wikisource`` ->
``Wikisource``, the ``OtherFr`` parliament sets -> their own sources, a ``Claire--LANG--Subset`` prefix ->
the Claire files of that language filtered on ``extra``'s ``subset``, TheStack by code language.
The rules are resolved against the dataset's real file list (`list_dataset_files`, cached), and the
report names every prefix that matches no file and every file that no prefix uses: the exact names of
the RedPajama/FineWebEdu, Gutenberg and GallicaPress files were inferred from the upload script, not
seen, and a wrong guess shows there. Persee was used in training but is not public.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from lucie_nemo.data.blends import DEFAULT_BLEND_FILES, read_blend_file
from lucie_nemo.errors import UserError
from lucie_nemo.phases import get_phase

DATASET = "OpenLLM-France/Lucie-Training-Dataset"
REVISION = "main"
VERSION = "v1.1"  # the pre-training data (v1.2 and v1.2-recent-web are later)
SUFFIX = "_text_document"
NOT_PUBLIC = {
    "Persee": "Persee was used in training but is not in the public release",
    # the annealing blend's MathPile (lucie_tokens_65k_annealing_grouped/), not phase 1's MathPile--* subsets
    "MathPile": "the annealing phase's MathPile was not released in this dataset (phase 1's MathPile--* subsets are)",
}
# Datasets uploaded as numbered parts (Lucie-Training assets/stats_raw/stats_OpenData--inca_opendata-1.json, -2)
NUMBERED_PARTS = {"OpenData--inca_opendata"}
# Upload names that differ from the prefix's dataset name (to_source_and_id_func and the dataset card).
SOURCE_RENAMES = {
    "ValidatedYouTube": "YouTube",
    "wikisource": "Wikisource",
    "wiktionary": "Wiktionary",
    "LEGI": "LEGI",
    "amendements_parlement": "AmendementsParlement",
    "interventions_parlement": "InterventionsParlement",
    "questions_ecrites_parlement": "QuestionsEcritesParlement",
}


@dataclass(frozen=True)
class DataVersion:
    """The release of the public dataset a prefix was trained on, and the branch holding it."""

    version: str  # the folder under data/: v1.1
    revision: str | None = None  # the branch; None: the revision asked for (--revision, default main)


# The extension phase trained on the OCR-filtered v1.2 data of these: its CSVs' document counts are v1.2's
# (GallicaMonographies 220,351, GallicaPress--html 989,114, Pile--Ubuntu_IRC 9,007, Pile--PhilPapers 28,106;
# v1.1 has 277,729 / 1,747,558 / 10,368 / 30,773). Lucie-Training's upload script and the dataset card put v1.2
# under data/v1.2/ on the branch v1.2.
V1_2 = DataVersion("v1.2", "v1.2")
PHASE_VERSIONS: dict[str, dict[str, DataVersion]] = {
    "extension": {name: V1_2 for name in ("GallicaMonographies", "GallicaPress--html", "Pile--Ubuntu_IRC",
                                          "Pile--PhilPapers")},
}
_LANGUAGE = re.compile(r"^[a-z]{2}(-[a-z]{2})?$")


@dataclass(frozen=True)
class HubRule:
    """Which Parquet files of the dataset a prefix reads: a folder, a file-name pattern, a row filter."""

    folder: str  # data/v1.1/natural/fr/RedPajama
    stem: str  # a regular expression the whole file name (without .parquet) must match
    row_filter: dict[str, str] | None = None  # {"subset": "MediaSum"}: a key of the JSON column `extra`


@dataclass
class PrefixSource:
    """One blend prefix, its weight, and the files it is built from (in concatenation order)."""

    prefix: str
    weight: float
    name: str
    version: str = VERSION
    revision: str = REVISION  # the branch its files are read at
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    row_filter: dict[str, str] | None = None
    folder: str | None = None
    stem: str | None = None
    missing: str | None = None  # why no file matched


@dataclass
class SourcesReport:
    """A phase's prefixes resolved against the dataset's files at one revision."""

    phase: str
    dataset: str
    revision: str
    sources: list[PrefixSource]
    unused_files: list[str]

    @property
    def unmatched(self) -> list[PrefixSource]:
        return [source for source in self.sources if not source.files]

    def to_json(self) -> dict:
        return {
            "phase": self.phase,
            "dataset": self.dataset,
            "revision": self.revision,
            "sources": [asdict(source) for source in self.sources],
            "unmatched_prefixes": [source.prefix for source in self.unmatched],
            "unused_files": self.unused_files,
        }


def dataset_name(prefix: str) -> str:
    """``RedPajama--fr--2019`` of ``lucie_tokens_65k_grouped/RedPajama--fr--2019_text_document``."""
    name = PurePosixPath(prefix).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def hub_rule(name: str, version: str = VERSION) -> HubRule:
    """The files of the public dataset that the original dataset ``name`` was made of."""
    parts = name.split("--")
    main, rest = parts[0], parts[1:]
    natural = f"data/{version}/natural"
    if main == "RedPajama" and len(rest) == 2:  # RedPajama--fr--2019: the year's snapshots 2019-04, 2019-09...
        language, year = rest
        return HubRule(f"{natural}/{language}/RedPajama", rf"RedPajama--{language}--{year}-\d\d(--.*)?")
    if main == "FineWebEdu" and len(rest) == 1:  # FineWebEdu--cc-main-2019: CC-MAIN-2019-04, 2019-09...
        return HubRule(f"{natural}/en/FineWebEdu", rf"FineWebEdu--{re.escape(rest[0])}-\d\d(--.*)?")
    if main == "TheStack" and len(rest) == 1:
        return HubRule(f"data/{version}/code/{rest[0]}/TheStack", r".*")
    if main == "Claire" and len(rest) == 2:
        return HubRule(f"{natural}/{rest[0]}/Claire", r".*", {"subset": rest[1]})
    if main == "Wikiother" and len(rest) == 2:
        return HubRule(f"{natural}/{rest[0]}/{SOURCE_RENAMES[rest[1]]}", r".*")
    if main == "OtherFr" and len(rest) == 1 and rest[0] in SOURCE_RENAMES:
        return HubRule(f"{natural}/fr/{SOURCE_RENAMES[rest[0]]}", r".*")
    if main == "Gutenberg" and len(rest) == 1:  # Gutenberg--fr.80: the French books kept at threshold 80
        language = rest[0].split(".")[0]
        return HubRule(f"{natural}/{language}/Gutenberg", r".*")
    if main == "CroissantAligned":
        return HubRule(f"{natural}/fr-en/CroissantAligned", r".*")
    source = SOURCE_RENAMES.get(main, main)
    if len(rest) == 1 and _LANGUAGE.match(rest[0]):  # Wikipedia--fr, Europarl--de, EuroparlAligned--fr-en
        return HubRule(f"{natural}/{rest[0]}/{source}", r".*")
    language = "en" if main in ("PeS2o", "AmericanStories", "MathPile", "Pile", "Stac") else "fr"
    if rest:  # Pile--FreeLaw, MathPile--arXiv, OpenData--inca_opendata, GallicaPress--html: by file name
        part = r"(-\d+)?" if name in NUMBERED_PARTS else ""
        return HubRule(f"{natural}/{language}/{source}", rf"{re.escape(name)}{part}(--.*)?")
    return HubRule(f"{natural}/{language}/{source}", r".*")


def numeric_order(path: str) -> list:
    """Sort key of a dataset's files in the original order: numbers compared as numbers (``--2`` before
    ``--10``), the rest as text."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def list_dataset_files(
    dataset: str = DATASET, revision: str = REVISION, endpoint: str | None = None, cache: Path | None = None
) -> dict[str, int]:
    """Path -> size of every file of the dataset at ``revision``, read once from the Hub, then from a cache
    (one per Hub endpoint). ``list_repo_tree`` rather than ``list_repo_files``: the sizes size the build's tasks."""
    import httpx
    from huggingface_hub import HfApi

    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint)
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", api.endpoint.split("://")[-1]).strip("-")
    cache_file = (cache or default_cache()) / host / f"{dataset.replace('/', '--')}@{revision}.json"
    if cache_file.is_file():
        return json.loads(cache_file.read_text())
    try:
        files = {
            entry.path: entry.size
            for entry in api.list_repo_tree(dataset, repo_type="dataset", revision=revision, recursive=True)
            if isinstance(entry, RepoFile)
        }
    except RevisionNotFoundError:
        raise UserError(f"dataset {dataset} has no revision {revision!r}: pass an existing --revision") from None
    except RepositoryNotFoundError:
        raise UserError(f"dataset {dataset} not found on {api.endpoint}: check --dataset and HF_TOKEN") from None
    except HfHubHTTPError as error:
        said = error.server_message or str(error).splitlines()[0]
        raise UserError(f"{api.endpoint} answered {error.response.status_code} for {dataset}: {said}") from None
    except (httpx.TransportError, ConnectionError) as error:
        raise UserError(
            f"cannot reach {api.endpoint} ({error}): check the network, --endpoint or HF_ENDPOINT"
        ) from None
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    tmp.write_text(json.dumps(files, indent=1, sort_keys=True))
    os.replace(tmp, cache_file)
    return files


def default_cache() -> Path:
    """Where file lists are cached: ``$LUCIE_CACHE`` or ``~/.cache/lucie-nemo``, under ``hub-files``."""
    return Path(os.environ.get("LUCIE_CACHE", Path.home() / ".cache" / "lucie-nemo")) / "hub-files"


def data_version(phase: str, name: str) -> DataVersion:
    """The release (and branch) of the public dataset that ``phase`` trained the dataset ``name`` on."""
    return PHASE_VERSIONS.get(phase, {}).get(name, DataVersion(VERSION))


def phase_sources(phase: str, files: dict[str, int], dataset: str = DATASET, revision: str = REVISION,
                  renormalize: bool = False, only: tuple[str, ...] = (),
                  files_at: Callable[[str], dict[str, int]] | None = None) -> SourcesReport:
    """Resolve every prefix of a phase's blend (or those named in ``only``) against the dataset's files:
    ``files`` at ``revision``, and ``files_at(branch)`` for a prefix of another release (`data_version`;
    without ``files_at``, ``files`` holds every branch's files)."""
    entries = read_blend_file(DEFAULT_BLEND_FILES[get_phase(phase).blend])
    if only:
        known = {dataset_name(prefix) for prefix, _ in entries} | {prefix for prefix, _ in entries}
        unknown = [name for name in only if name not in known]
        if unknown:
            raise UserError(
                f"prefix {unknown[0]!r} is not in the {phase} blend: give a name such as "
                f"{dataset_name(entries[0][0])!r} or a prefix such as {entries[0][0]!r} "
                f"(`lucie data sources {phase}` lists them)"
            )
        entries = [(prefix, weight) for prefix, weight in entries if prefix in only or dataset_name(prefix) in only]
    branches: dict[str, dict[str, int] | str] = {revision: files}
    used: set[str] = set()
    sources = []
    for prefix, weight in entries:
        name = dataset_name(prefix)
        release = data_version(phase, name)
        source = PrefixSource(prefix, weight, name, release.version, release.revision or revision)
        listed = _branch_files(branches, source.revision, files_at or (lambda _: files))
        if name in NOT_PUBLIC:
            source.missing = NOT_PUBLIC[name]
        elif isinstance(listed, str):
            source.missing = listed
        else:
            rule = hub_rule(name, release.version)
            source.folder, source.stem, source.row_filter = rule.folder, rule.stem, rule.row_filter
            pattern = re.compile(rule.stem)
            source.files = sorted((
                path for path in listed if path.endswith(".parquet")
                and path.rsplit("/", 1)[0] == rule.folder and pattern.fullmatch(PurePosixPath(path).stem)
            ), key=numeric_order)
            source.bytes = sum(listed[path] for path in source.files)
            if not source.files:
                source.missing = f"no file {rule.folder}/<{rule.stem}>.parquet at {source.revision}"
        used.update(source.files)
        sources.append(source)
    if renormalize:
        total = math.fsum(source.weight for source in sources if source.files)
        for source in sources:
            source.weight = source.weight / total if source.files else 0.0
    parquet = sorted(path for path in files if path.startswith(f"data/{VERSION}/") and path.endswith(".parquet"))
    return SourcesReport(phase, dataset, revision, sources, [path for path in parquet if path not in used])


def _branch_files(branches: dict, revision: str, files_at: Callable[[str], dict[str, int]]) -> dict[str, int] | str:
    """The file list of ``revision`` (read once), or why there is none."""
    if revision not in branches:
        try:
            branches[revision] = files_at(revision)
        except UserError as error:
            branches[revision] = f"{error}"
    return branches[revision]
