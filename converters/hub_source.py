"""A Hub revision (e.g. a branch of OpenLLM-France/Lucie-7B-optimizer-states) as a local folder, by huggingface_hub."""

from __future__ import annotations

import re
from pathlib import Path

from lucie_nemo.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` names a Hub repository (owner/name) rather than a local folder."""
    return not Path(source).exists() and bool(_HUB_ID.match(str(source)))


def download_revision(repo_id: str, revision: str | None, endpoint: str | None = None) -> Path:
    """The files of ``repo_id`` at ``revision`` in huggingface_hub's cache (downloaded if missing, with progress): after
    a kill, the files already downloaded are kept and those in flight start again."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if revision is None:
        raise UserError(f"{repo_id} is a Hub repository: pass --revision (one branch, e.g. step0500000)")
    _remove_orphaned_partials(repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=revision, endpoint=endpoint))
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision!r}: pass one of its branches, e.g. step0500000") from None
    except RepositoryNotFoundError:
        raise UserError(f"Hub repository {repo_id} not found (or not readable with your token)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise UserError(f"cannot download {repo_id}@{revision}: {str(error).splitlines()[0]}") from None


def _remove_orphaned_partials(repo_id: str) -> None:
    """Delete the partial files a killed download left in huggingface_hub's cache, unless a live download holds their
    lock. (huggingface_hub writes each file to ``blobs/<etag>.<id>.incomplete``, a name of its own process, so a
    killed run's partial files are never resumed nor removed: up to a whole shard each.)"""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache, folder = Path(constants.HF_HUB_CACHE), repo_folder_name(repo_id=repo_id, repo_type="model")
    for partial in (cache / folder / "blobs").glob("*.*.incomplete"):
        lock = cache / ".locks" / folder / f"{partial.name.split('.', 1)[0]}.lock"  # huggingface_hub's, per etag
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(lock, timeout=0):
                partial.unlink(missing_ok=True)
        except Timeout:  # being downloaded now, by another process
            continue
