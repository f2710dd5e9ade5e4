"""Upload a checked Hugging Face folder to one branch (revision) of a Hub model repository."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converters.hf_writer import check_folder, read_json
from lucie_nemo.errors import UserError
from lucie_nemo.phases import PHASES
from lucie_nemo.schedule import PhaseSchedule

MAIN = "main"


@dataclass(frozen=True)
class PublishPlan:
    """What goes where: the files of ``folder`` to branch ``revision`` of ``repo_id``."""

    folder: Path
    repo_id: str
    revision: str
    files: list[tuple[str, int]]  # (path relative to folder, bytes)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def check_revision(revision: str, config: dict) -> None:
    """Accept ``main`` or a name of the form Phase.revision(step) whose cumulative step matches config.json."""
    if revision == MAIN:
        return
    for phase in PHASES.values():
        match = re.fullmatch(re.escape(phase.revision_prefix) + r"step(\d{7})", revision)
        if match and phase.revision(int(match.group(1))) == revision:
            expected = PhaseSchedule(phase).record(int(match.group(1))).cumulative_step
            if config.get("training_steps") != expected:
                raise UserError(
                    f"revision {revision} is cumulative step {expected}, the folder's config.json says "
                    f"training_steps={config.get('training_steps')}: publish it under its own revision"
                )
            return
    examples = ", ".join(p.revision(p.save_interval) for p in PHASES.values())
    raise UserError(f"revision {revision!r} is not a Lucie revision name (e.g. {examples}) nor {MAIN!r}")


def plan(folder: str | Path, repo_id: str, revision: str) -> PublishPlan:
    """Check the folder and the revision name; list the files to upload."""
    folder = Path(folder)
    check_folder(folder)
    check_revision(revision, read_json(folder / "config.json"))
    if not (folder / "README.md").is_file():
        raise UserError(f"{folder} has no README.md model card: export it with `lucie export`")
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return PublishPlan(folder, repo_id, revision, files)


def publish(publish_plan: PublishPlan, token: str | None = None) -> str:
    """Create the branch (if missing) and upload the folder to it; return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_branch(publish_plan.repo_id, branch=publish_plan.revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=publish_plan.repo_id,
        folder_path=str(publish_plan.folder),
        revision=publish_plan.revision,
        repo_type="model",
        commit_message=f"Upload {publish_plan.revision}",
    )
    return str(getattr(commit, "commit_url", commit))
