"""`lucie publish` against tests/fake_hub.py, a local server that speaks the Hub endpoints huggingface_hub uses.

Uploads run the CLI in a subprocess with HF_HUB_DISABLE_XET=1: huggingface_hub reads it when imported, and the
fake Hub speaks Git LFS, not Xet. Runs that stop before uploading use typer's CliRunner in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from converters_fixtures import converter_runs, exported  # noqa: F401
from fake_hub import GITATTRIBUTES, FakeHub, Request

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "lucie-tests/Lucie-tiny"


@dataclass(frozen=True)
class Upload:
    result: subprocess.CompletedProcess
    requests: list[Request]  # those this run made


def publish_here(*args: str | Path):
    """`lucie publish ARGS` in this process."""
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["publish", *map(str, args)])


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def branch_digests(hub: FakeHub, branch: str) -> dict[str, str]:
    """sha256 of every file of a branch except the .gitattributes the Hub writes in a new repository."""
    return {path: sha256(content) for path, content in hub.files(REPO_ID, branch).items() if path != ".gitattributes"}


@pytest.fixture(scope="module")
def hub():
    """One Hub for the upload scenario below (first publish, re-publish, second revision, changed file)."""
    with FakeHub() as running:
        yield running


@pytest.fixture(scope="module")
def upload(hub, tmp_path_factory) -> Callable[..., Upload]:
    """`lucie publish ARGS --endpoint HUB` in a subprocess, with the Hub's token and Xet off."""
    env = {**os.environ, "HF_TOKEN": hub.token, "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

    def run(*args: str | Path) -> Upload:
        before = len(hub.requests)
        command = [sys.executable, "-m", "lucie_nemo.cli", "publish", *map(str, args), "--endpoint", hub.url]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return Upload(result, hub.requests[before:])

    return run


@pytest.fixture(scope="module")
def first(upload, exported) -> Upload:
    """The first publish of the export, --revision left out."""
    return upload(exported, "--repo", REPO_ID, "--private")


@pytest.fixture(scope="module")
def step4(exported, tmp_path_factory) -> Path:
    """A copy of the export whose config.json and model card say step 4 (revision step0000004)."""
    folder = tmp_path_factory.mktemp("step4") / "step4"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "training_steps": 4}, indent=2))
    card = (folder / "README.md").read_text()
    assert "revision: step0000002\n" in card and "  num_steps: 2\n" in card
    card = card.replace("revision: step0000002\n", "revision: step0000004\n").replace("  num_steps: 2\n", "  num_steps: 4\n")
    (folder / "README.md").write_text(card)
    return folder


def relabelled(exported: Path, folder: Path, phase, step: int, steps: int, lucie_run: bool) -> Path:
    """A copy of the export whose config.json and model card are those `lucie export` writes for ``phase`` at
    ``step`` of a run at cumulative step ``steps`` (a Lucie-7B run's card when ``lucie_run``)."""
    from converters.model_card import model_card
    from converters.run_progress import RunProgress
    from converters_fixtures import tiny_shape
    from lucie_nemo.hf_config import hf_config

    shutil.copytree(exported, folder)
    tokens = steps * 8 * phase.seq_length
    config = {**hf_config(phase, step, shape=tiny_shape()), "training_steps": steps, "training_tokens": tokens}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    progress = RunProgress(steps, tokens, lucie_run, "the checkpoint's train state and the phases before it")
    (folder / "README.md").write_text(model_card(phase, step, tiny_shape(), progress))
    return folder


@pytest.fixture(scope="module")
def demo_annealing(exported, tmp_path_factory) -> Path:
    """The export relabelled as the demo's annealing step 10 (363 steps since the start of its phase 1: no step of
    Lucie-7B's schedule): config.json and card as `lucie export` writes them for that scaled-down run."""
    from lucie_nemo.phases import ANNEAL

    return relabelled(exported, tmp_path_factory.mktemp("demo") / "annealing_step0000010", ANNEAL, 10, 363, False)


@pytest.fixture(scope="module")
def second(first, upload, step4) -> Upload:
    return upload(step4, "--repo", REPO_ID, "--revision", "step0000004")


@pytest.fixture
def empty_hub(monkeypatch):
    """A fresh Hub, its token in HF_TOKEN, for runs in this process."""
    with FakeHub() as running:
        monkeypatch.setenv("HF_TOKEN", running.token)
        yield running


def test_first_publish_creates_the_repository_and_the_folders_own_branch(first, hub):
    assert "branch step0000002" in first.result.stdout and "committed: " in first.result.stdout
    assert set(hub.repos[REPO_ID].branches) == {"main", "step0000002"} and hub.repos[REPO_ID].private
    assert hub.files(REPO_ID, "main") == {".gitattributes": GITATTRIBUTES}
    calls = {(r.method, r.path) for r in first.requests}
    assert {("POST", "/api/repos/create"), ("POST", f"/api/models/{REPO_ID}/branch/step0000002"),
            ("POST", f"/api/models/{REPO_ID}/commit/step0000002")} <= calls
    assert all(r.status == 200 for r in first.requests), first.requests


def test_the_branch_holds_the_folder_byte_for_byte_shards_in_lfs(first, hub, exported):
    assert branch_digests(hub, "step0000002") == digests(exported)
    tree = hub.head(REPO_ID, "step0000002").tree
    assert {path for path, stored in tree.items() if stored.lfs} == {p.name for p in exported.glob("*.safetensors")}
    assert sum(r.method == "PUT" for r in first.requests) == 3  # one LFS upload per shard


def test_republishing_the_same_folder_changes_nothing(first, hub, upload, exported):
    head, commits = hub.head(REPO_ID, "step0000002"), len(hub.repos[REPO_ID].commits)
    again = upload(exported, "--repo", REPO_ID)
    assert "nothing changed" in again.result.stdout and head.oid in again.result.stdout
    assert hub.head(REPO_ID, "step0000002") == head and len(hub.repos[REPO_ID].commits) == commits
    assert not [r for r in again.requests if r.method == "PUT" or "/commit/" in r.path], again.requests


def test_a_second_revision_gets_its_own_branch(first, second, hub, step4):
    assert set(hub.repos[REPO_ID].branches) == {"main", "step0000002", "step0000004"}
    assert branch_digests(hub, "step0000004") == digests(step4)
    assert hub.repos[REPO_ID].branches["step0000002"] in first.result.stdout  # still the first publish's commit
    assert not [r for r in second.requests if r.method == "PUT"]  # same shards: the Hub has them already


def test_a_changed_file_commits_only_that_file(second, hub, upload, step4, tmp_path):
    folder = tmp_path / "step4"
    shutil.copytree(step4, folder)
    shard = folder / "model-00002-of-00003.safetensors"
    changed = bytearray(shard.read_bytes())
    changed[-1] ^= 1
    shard.write_bytes(changed)
    run = upload(folder, "--repo", REPO_ID)
    assert "committed: " in run.result.stdout
    assert hub.head(REPO_ID, "step0000004").paths == (shard.name,)
    assert branch_digests(hub, "step0000004") == digests(folder)
    assert sum(r.method == "PUT" for r in run.requests) == 1


def test_dry_run_prints_the_plan_and_contacts_nothing(exported, empty_hub):
    result = publish_here(exported, "--repo", REPO_ID, "--endpoint", empty_hub.url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"repository {REPO_ID} on {empty_hub.url}, branch step0000002" in result.output
    for file in exported.iterdir():
        assert f"{file.stat().st_size:,}  {file.name}" in result.output
    assert "dry run: nothing uploaded" in result.output
    assert empty_hub.requests == []


def test_revision_must_be_main_or_the_folders_own(exported, empty_hub):
    def run(revision: str):
        return publish_here(exported, "--repo", REPO_ID, "--endpoint", empty_hub.url, "--revision", revision)

    result = run("checkpoint-2")
    assert result.exit_code == 2 and "not a Lucie revision name" in result.output
    result = run("extension_step0000250")
    assert result.exit_code == 2 and "not the folder's own, step0000002" in result.output and "training_steps=2" in result.output
    assert empty_hub.requests == []


def test_folder_revision_is_read_from_config():
    from converters.publish import folder_revision, folder_revisions
    from lucie_nemo.errors import UserError
    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import ANNEAL, EXTENSION, PRETRAIN

    assert folder_revision(hf_config(PRETRAIN, 5_000)) == "step0005000"
    assert folder_revision(hf_config(EXTENSION, 250)) == "extension_step0000250"
    assert folder_revision(hf_config(ANNEAL, 500)) == "annealing_step0000500"
    last_extension = hf_config(EXTENSION)  # the same cumulative step, RoPE and context as annealing step 0
    assert folder_revisions(last_extension) == ["extension_step0001220", "annealing_step0000000"]
    with pytest.raises(UserError, match="pass --revision"):
        folder_revision(last_extension)
    with pytest.raises(UserError, match="no step of a Lucie phase"):
        folder_revision({**hf_config(PRETRAIN, 5_000), "rope_theta": 10_000.0})


def test_a_wrong_token_is_refused_with_the_fix(exported, empty_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    result = publish_here(exported, "--repo", REPO_ID, "--endpoint", empty_hub.url)
    assert result.exit_code == 2 and "refused the token" in result.output and "hf auth login" in result.output
    assert empty_hub.repos == {} and {r.status for r in empty_hub.requests} == {401}


def test_a_namespace_the_token_cannot_write_is_refused(exported, empty_hub):
    result = publish_here(exported, "--repo", "someone-else/Lucie-tiny", "--endpoint", empty_hub.url)
    assert result.exit_code == 2 and "may not write to someone-else/Lucie-tiny" in result.output
    assert empty_hub.repos == {}


def test_an_unreachable_hub_is_a_clear_error(exported, empty_hub):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = publish_here(exported, "--repo", REPO_ID, "--endpoint", closed)
    assert result.exit_code == 2 and f"cannot reach {closed}" in result.output


def test_a_new_branch_keeps_mains_extra_files_and_hidden_files_stay_home(exported, tmp_path):
    """A branch starts from main (its LICENSE stays); .cache/ and other hidden files of the folder are not sent."""
    folder = tmp_path / "step2"
    shutil.copytree(exported, folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("local state")
    (folder / ".hidden").write_text("local note")
    with FakeHub() as hub:
        hub.add_repo(REPO_ID, {"LICENSE": b"Apache-2.0\n"})
        env = {**os.environ, "HF_TOKEN": hub.token, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        command = [sys.executable, "-m", "lucie_nemo.cli", "publish", str(folder), "--repo", REPO_ID, "--endpoint", hub.url]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert hub.files(REPO_ID, "main") == {".gitattributes": GITATTRIBUTES, "LICENSE": b"Apache-2.0\n"}
        assert branch_digests(hub, "step0000002") == {**digests(exported), "LICENSE": sha256(b"Apache-2.0\n")}


def test_a_scaled_run_publishes_under_its_own_revision(demo_annealing, upload, hub):
    card = (demo_annealing / "README.md").read_text()
    assert "Not Lucie-7B" in card and "revision: annealing_step0000010\n" in card
    run = upload(demo_annealing, "--repo", REPO_ID)
    assert "branch annealing_step0000010" in run.result.stdout and "committed: " in run.result.stdout
    assert branch_digests(hub, "annealing_step0000010") == digests(demo_annealing)


def test_a_scaled_run_takes_its_own_revision_or_main_only(demo_annealing, empty_hub):
    def run(*revision: str):
        return publish_here(demo_annealing, "--repo", REPO_ID, "--endpoint", empty_hub.url, "--dry-run", *revision)

    for accepted in ((), ("--revision", "annealing_step0000010"), ("--revision", "main")):
        result = run(*accepted)
        assert result.exit_code == 0 and f"branch {accepted[-1] if accepted else 'annealing_step0000010'}" in result.output
    for other in ("annealing_step0000363", "extension_step0000010"):
        result = run("--revision", other)
        assert result.exit_code == 2 and f"revision {other} is not the folder's own, annealing_step0000010" in result.output
    assert empty_hub.requests == []


def test_a_card_whose_revision_config_json_contradicts_is_refused(demo_annealing, exported, tmp_path):
    from lucie_nemo.phases import ANNEAL, EXTENSION, PRETRAIN

    lucie_card = relabelled(exported, tmp_path / "lucie", PRETRAIN, 2, 2, True)  # a Lucie-7B card: strict as before
    result = publish_here(lucie_card, "--repo", REPO_ID, "--dry-run")
    assert result.exit_code == 0 and "branch step0000002" in result.output
    config = json.loads((lucie_card / "config.json").read_text())
    (lucie_card / "config.json").write_text(json.dumps({**config, "training_steps": 3}))
    result = publish_here(lucie_card, "--repo", REPO_ID, "--dry-run")
    assert result.exit_code == 2 and "records revision step0000002, config.json (training_steps=3" in result.output
    moved = relabelled(exported, tmp_path / "moved", ANNEAL, 10, 363, False)  # the card's steps are not config's
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "training_steps": 364}))
    result = publish_here(moved, "--repo", REPO_ID, "--dry-run")
    assert result.exit_code == 2 and "records revision annealing_step0000010 (363 steps), config.json does not fit" in result.output
    other_rope = relabelled(exported, tmp_path / "rope", EXTENSION, 10, 363, False)  # config.json: phase 1's RoPE
    config = json.loads((other_rope / "config.json").read_text())
    (other_rope / "config.json").write_text(json.dumps({**config, "rope_theta": 500_000.0}))
    result = publish_here(other_rope, "--repo", REPO_ID, "--dry-run")
    assert result.exit_code == 2 and "records revision extension_step0000010 (363 steps), config.json does not fit" in result.output
