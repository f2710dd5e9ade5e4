"""The original Lucie-7B run's published training logs (CSV files in its model repository).

``metadata/training_logs/{1_pretraining,2_extension,3_annealing}/*.csv`` with the columns
``training_steps,training_tokens,training_loss,walltime,gputime,learning_rate``, from a local copy
of the repository or fetched from the Hub with huggingface_hub.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from lucie_nemo.errors import UserError

LOGS_FOLDER = "metadata/training_logs"
PHASE_FOLDERS = {"pretrain": "1_pretraining", "extension": "2_extension", "anneal": "3_annealing"}
COLUMNS = ("training_steps", "training_tokens", "training_loss", "walltime", "gputime", "learning_rate")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class OriginalPhase:
    """One phase of the original run, its steps and tokens counted from the start of phase 1."""

    phase: str
    steps: list[int]
    tokens: list[int]
    loss: list[float]
    lr: list[float]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks the column(s) {', '.join(missing)} of the published training logs "
                            f"({','.join(COLUMNS)})")
        return list(reader)


def _number(text: str, path: Path, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: {column} {text!r} is not a number") from None


def read_original_logs(repository: Path) -> list[OriginalPhase]:
    """The phases found under ``repository/metadata/training_logs``, in training order."""
    phases: list[OriginalPhase] = []
    step_end = token_end = 0
    for phase, folder in PHASE_FOLDERS.items():
        rows = []
        for path in sorted((repository / LOGS_FOLDER / folder).glob("*.csv")):
            rows += [(path, row) for row in _read_csv(path)]
        if not rows:
            continue
        values = sorted((int(_number(row["training_steps"], p, "training_steps")),
                         int(_number(row["training_tokens"], p, "training_tokens")),
                         _number(row["training_loss"], p, "training_loss"),
                         _number(row["learning_rate"], p, "learning_rate")) for p, row in rows)
        steps, tokens, loss, lr = (list(column) for column in zip(*values))
        # Whether the later phases' files count from their own start is not documented: handle both.
        if steps[0] < step_end:
            steps = [step + step_end for step in steps]
        if tokens[0] < token_end:
            tokens = [token + token_end for token in tokens]
        phases.append(OriginalPhase(phase, steps, tokens, loss, lr))
        step_end, token_end = steps[-1], tokens[-1]
    if not phases:
        raise UserError(f"no training log CSV under {repository / LOGS_FOLDER}/"
                        f"{{{','.join(PHASE_FOLDERS.values())}}}: give a copy of the model repository or its Hub id")
    return phases


def fetch_original_logs(repo_id: str) -> Path:
    """Download the logs of the model repository ``repo_id`` (huggingface_hub's cache) and return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[f"{LOGS_FOLDER}/*/*.csv"]))
    except HfHubHTTPError as error:
        raise UserError(f"cannot fetch the training logs of {repo_id} from the Hub ({str(error).splitlines()[0]}): "
                        "check the repository id and your token (HF_TOKEN)") from None
    except (LocalEntryNotFoundError, OSError) as error:
        raise UserError(f"cannot reach the Hub for {repo_id} ({str(error).splitlines()[0]}): "
                        "check the network or HF_ENDPOINT, or give a local copy of the repository") from None


def load_original(source: str) -> list[OriginalPhase]:
    """``source``: a local copy of the model repository, or its Hub id (e.g. OpenLLM-France/Lucie-7B)."""
    folder = Path(source)
    if folder.is_dir():
        return read_original_logs(folder)
    if _REPO_ID.fullmatch(source) and not folder.exists():
        return read_original_logs(fetch_original_logs(source))
    raise UserError(f"--original {source!r} is neither a folder nor a Hub id such as OpenLLM-France/Lucie-7B")
