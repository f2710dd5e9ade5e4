"""Publish a checked Hugging Face folder as one branch (revision) of a Hub model repository.

The plan (folder, repository, branch, files) is made and checked offline; `publish` then creates the
repository and the branch if missing and commits the files with huggingface_hub, which skips files whose
remote copy is identical and makes no commit when none changed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from converters.hf_writer import check_folder, read_json
from converters.model_card import CardFacts, read_card
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import rope_theta_of
from lucie_nemo.phases import PHASES, Phase
from lucie_nemo.schedule import PhaseSchedule

MAIN = "main"


@dataclass(frozen=True)
class PlannedFile:
    path: str  # relative to the folder, as in the repository
    size: int  # bytes


@dataclass(frozen=True)
class PublishPlan:
    """The files of ``folder`` to branch ``revision`` of ``repo_id`` on the Hub at ``endpoint``."""

    folder: Path
    repo_id: str
    revision: str
    endpoint: str
    private: bool
    files: tuple[PlannedFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)


@dataclass(frozen=True)
class PublishResult:
    commit_url: str
    changed: bool  # False: the branch already held these files, no commit was made


def parse_revision(name: str) -> tuple[Phase, int] | None:
    """(phase, step) of a Lucie revision name such as ``step0005000`` or ``extension_step0000250``."""
    for phase in PHASES.values():
        match = re.fullmatch(re.escape(phase.revision_prefix) + r"step(\d{7})", name)
        if match:
            return phase, int(match.group(1))
    return None


def folder_revisions(config: dict) -> list[str]:
    """Revision names whose phase has the RoPE theta and context of ``config`` and whose cumulative step is
    its ``training_steps`` (one name, or two at the boundary of two phases that share RoPE and context)."""
    steps = config.get("training_steps")
    context = (config.get("max_position_embeddings"), rope_theta_of(config))
    names = []
    for phase in PHASES.values():
        if isinstance(steps, int) and context == (phase.seq_length, float(phase.rotary_base)):
            schedule = PhaseSchedule(phase)
            step = steps - schedule.step_offset
            if 0 <= step <= schedule.train_iters:
                names.append(phase.revision(step))
    return names


def folder_revision(config: dict, card: CardFacts | None = None) -> str:
    """The revision name of an exported folder: the one its model card records when it fits config.json (the only
    source for a run other than Lucie-7B's, whose steps are its own), else the one config.json implies."""
    if card is not None and card.revision is not None:
        check_card_revision(card, config)
        return card.revision
    names = folder_revisions(config)
    if len(names) == 1:
        return names[0]
    if names:
        raise UserError(f"config.json ({_describe(config)}) fits revisions {' and '.join(names)}: pass --revision")
    raise UserError(f"config.json ({_describe(config)}) is no step of a Lucie phase: pass --revision NAME or main")


def check_card_revision(card: CardFacts, config: dict) -> None:
    """Refuse a card whose recorded revision disagrees with config.json: for the Lucie-7B run, config.json's
    cumulative step must name it; for another run, its phase must have config.json's RoPE theta and context, and
    the card's step count must be config.json's."""
    parsed = parse_revision(card.revision)
    if parsed is None:
        raise UserError(f"the model card records revision {card.revision!r}, not a Lucie revision name: "
                        "re-export the folder with `lucie export`")
    if card.lucie_run:
        if card.revision not in folder_revisions(config):
            raise UserError(f"the model card records revision {card.revision}, config.json ({_describe(config)}) "
                            f"does not: re-export the folder with `lucie export`")
        return
    phase = parsed[0]
    context = (config.get("max_position_embeddings"), rope_theta_of(config))
    if context != (phase.seq_length, float(phase.rotary_base)) or card.num_steps != config.get("training_steps"):
        raise UserError(f"the model card records revision {card.revision} ({card.num_steps} steps), config.json "
                        f"does not fit it ({_describe(config)}): re-export the folder with `lucie export`")


def _describe(config: dict) -> str:
    return (f"training_steps={config.get('training_steps')}, rope_theta={rope_theta_of(config)}, "
            f"max_position_embeddings={config.get('max_position_embeddings')}")


def check_revision(revision: str, config: dict, card: CardFacts | None = None) -> None:
    """Accept ``main`` or the folder's own revision name (``folder_revision``)."""
    if revision == MAIN:
        return
    if parse_revision(revision) is None:
        examples = ", ".join(p.revision(p.save_interval) for p in PHASES.values())
        raise UserError(f"revision {revision!r} is not a Lucie revision name (e.g. {examples}) nor {MAIN!r}")
    if card is not None and card.revision is not None:
        check_card_revision(card, config)
        if revision != card.revision:
            raise UserError(f"revision {revision} is not the folder's own, {card.revision} (its model card; "
                            f"config.json: {_describe(config)}): leave --revision out, or pass {MAIN!r}")
        return
    if revision not in folder_revisions(config):
        raise UserError(f"revision {revision} does not match the folder's config.json ({_describe(config)}): "
                        f"publish it under its own revision (leave --revision out) or {MAIN!r}")


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"--repo {repo_id!r} is not a repository id: {error}") from None
    if "/" not in repo_id:
        raise UserError(f"--repo {repo_id!r} names no owner: write OWNER/NAME, e.g. OpenLLM-France/Lucie-7B")


def folder_files(folder: Path) -> tuple[PlannedFile, ...]:
    """Every file of ``folder`` except hidden ones (.cache/, .git/, .gitattributes: the Hub keeps its own)."""
    paths = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    visible = [p for p in paths if not any(part.startswith(".") for part in p.parts)]
    return tuple(PlannedFile(p.as_posix(), (folder / p).stat().st_size) for p in visible)


def plan(folder: str | Path, repo_id: str, revision: str | None = None, endpoint: str | None = None,
         private: bool = False) -> PublishPlan:
    """Check the folder, its model card and the revision (default: the folder's own); list the files."""
    from huggingface_hub import constants

    folder = Path(folder)
    check_repo_id(repo_id)
    check_folder(folder)
    if not (folder / "README.md").is_file():
        raise UserError(f"{folder} has no README.md model card: export it with `lucie export`")
    config = read_json(folder / "config.json")
    card = read_card(folder / "README.md")
    revision = folder_revision(config, card) if revision is None else revision
    check_revision(revision, config, card)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    return PublishPlan(folder, repo_id, revision, endpoint, private, folder_files(folder))


def publish(publish_plan: PublishPlan) -> PublishResult:
    """Create the repository and the branch (from main) if missing, then commit the files that changed.

    The token is huggingface_hub's: ``HF_TOKEN``, or the one saved by ``hf auth login``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=publish_plan.endpoint)
    repo_id, revision = publish_plan.repo_id, publish_plan.revision
    with hub_errors(publish_plan):
        api.create_repo(repo_id, private=publish_plan.private or None, exist_ok=True)
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        operations = [CommitOperationAdd(f.path, publish_plan.folder / f.path) for f in publish_plan.files]
        commit = api.create_commit(repo_id, operations, commit_message=f"Upload {revision}", revision=revision)
    return PublishResult(commit.commit_url, changed=commit.oid != head)


@contextlib.contextmanager
def hub_errors(publish_plan: PublishPlan):
    """Turn the Hub's refusals and network failures into UserErrors that name the fix."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    endpoint, repo_id = publish_plan.endpoint, publish_plan.repo_id
    try:
        yield
    except HfHubHTTPError as error:
        status, said = error.response.status_code, error.server_message or str(error).splitlines()[0]
        if status == 401:
            raise UserError(f"{endpoint} refused the token (401: {said}): set HF_TOKEN to a token with write "
                            f"access, or run `hf auth login`") from None
        if status == 403 or isinstance(error, RepositoryNotFoundError):
            raise UserError(f"this token may not write to {repo_id} on {endpoint} ({status}: {said}): use a token "
                            f"with write access to {repo_id.split('/')[0]}, or a repository you own") from None
        raise UserError(f"{endpoint} answered {status} for {error.request.method} {error.request.url.path}: "
                        f"{said}") from None
    except (httpx.TransportError, ConnectionError) as error:
        raise UserError(f"cannot reach {endpoint} ({error}): check the network, --endpoint or HF_ENDPOINT") from None
