"""`lucie publish`: branch creation and upload, with huggingface_hub's HfApi mocked (no Hub access here)."""

from __future__ import annotations

import typer
from huggingface_hub import HfApi
from typer.testing import CliRunner

from converters_fixtures import converter_runs, exported  # noqa: F401



def run(*args: str):
    from lucie_nemo.cli.convert import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["publish", *map(str, args)])


class FakeHub:
    """Records the HfApi calls that publish makes."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []

        def create_branch(api, repo_id, *, branch, **kwargs):
            self.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch, **kwargs}))

        def upload_folder(api, **kwargs):
            self.calls.append(("upload_folder", kwargs))
            return "https://huggingface.co/fake/commit/1"

        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_creates_the_branch_then_uploads_the_folder_to_it(exported, monkeypatch):
    hub = FakeHub(monkeypatch)
    result = run(exported, "--repo", "OpenLLM-France/Lucie-tiny", "--revision", "step0000002")
    assert result.exit_code == 0, result.output
    (first, branch), (second, upload) = hub.calls
    assert first == "create_branch" and branch["branch"] == "step0000002" and branch["exist_ok"] is True
    assert branch["repo_id"] == "OpenLLM-France/Lucie-tiny"
    assert second == "upload_folder" and upload["revision"] == "step0000002"
    assert upload["folder_path"] == str(exported) and upload["repo_id"] == "OpenLLM-France/Lucie-tiny"
    for name in ("config.json", "generation_config.json", "README.md", "tokenizer.json", "model.safetensors.index.json"):
        assert name in result.output


def test_dry_run_uploads_nothing(exported, monkeypatch):
    hub = FakeHub(monkeypatch)
    result = run(exported, "--repo", "x/y", "--revision", "step0000002", "--dry-run")
    assert result.exit_code == 0 and "dry run" in result.output and hub.calls == []
    assert "model-00001-of-00003.safetensors" in result.output


def test_revision_must_be_a_lucie_name_matching_the_folder(exported, monkeypatch):
    hub = FakeHub(monkeypatch)
    assert run(exported, "--repo", "x/y", "--revision", "checkpoint-2").exit_code == 2
    result = run(exported, "--repo", "x/y", "--revision", "extension_step0000250")
    assert result.exit_code == 2 and "training_steps=2" in result.output
    assert hub.calls == []
