"""Light commands load neither torch nor Megatron and keep stderr empty; the modules' dependencies are one-way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "megatron", "transformers", "nemo_run")

# Runs `lucie ARGS` in a fresh interpreter, then reports which heavy packages the command imported.
PROBE = """
import sys
sys.argv = ["lucie", *sys.argv[1:]]
from lucie_nemo.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code or 0
print("loaded:", ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stdout)
sys.exit(code)
"""


def light_run(*args: str | Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    command = [sys.executable, "-c", PROBE.format(heavy=HEAVY), *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("loaded:"), result.stdout + result.stderr
    return result, [name for name in last.removeprefix("loaded:").strip().split(",") if name]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny exported-looking folder (config.json, one zero shard, model card) at pretrain step 2."""
    import torch

    from converters.hf_writer import plan_shards, write_shards
    from converters.layout import hf_tensors
    from lucie_nemo.architecture import LucieShape
    from lucie_nemo.hf_config import hf_config
    from lucie_nemo.phases import PRETRAIN

    shape = LucieShape(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                       num_query_groups=1, vocab_size=256)
    folder = tmp_path_factory.mktemp("light") / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(PRETRAIN, 2, shape=shape)))
    write_shards(folder, plan_shards(hf_tensors(shape), 10**9), lambda item: torch.zeros(item.shape), progress=False)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    return folder


@pytest.mark.parametrize("args", [
    ("--help",),
    ("schedule", "pretrain", "--steps", "1,753851"),
    ("data", "blend", "anneal", "--data-root", "/data/lucie"),
], ids=["help", "schedule", "data-blend"])
def test_light_command_imports_nothing_heavy_and_keeps_stderr_empty(args):
    result, loaded = light_run(*args)
    assert result.returncode == 0, result.stderr
    assert loaded == []
    assert result.stderr == ""


def test_publish_dry_run_imports_nothing_heavy(hf_folder):
    result, loaded = light_run("publish", hf_folder, "--repo", "someone/lucie-tiny", "--dry-run",
                               "--endpoint", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert "branch step0000002" in result.stdout and "dry run: nothing uploaded" in result.stdout
    assert loaded == []
    assert result.stderr == ""


def test_publish_check_still_reads_the_shards(hf_folder, tmp_path):
    """The torch-free check still refuses a shard whose tensor has the wrong shape."""
    import shutil

    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    broken = tmp_path / "broken"
    shutil.copytree(hf_folder, broken)
    shard = next(broken.glob("*.safetensors"))
    with safe_open(shard, framework="numpy") as opened:
        names = list(opened.keys())
    save_file({name: np.zeros((1,), dtype=np.float16) for name in names}, shard)
    result, _ = light_run("publish", broken, "--repo", "someone/lucie-tiny", "--dry-run")
    assert result.returncode == 2
    assert "model-00001-of-00001.safetensors is F16 (1,), config.json implies BF16" in result.stderr


def test_cuda_toolkit_warning_is_quieted_on_a_cpu_machine(tmp_path):
    """torch.utils.cpp_extension warns "No CUDA runtime is found" when a CUDA toolkit exists without a GPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the warning exists only without CUDA")
    script = ("from lucie_nemo import runtime; runtime.quiet_imports(); import torch.utils.cpp_extension")
    env = {"PATH": "/usr/bin:/bin", "CUDA_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "No CUDA runtime" not in result.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_cpu_support_does_not_import_the_model():
    """lucie_nemo.model imports cpu_support (the import hook); the reverse would close a circle."""
    assert "lucie_nemo.cpu_support" in imported_modules(ROOT / "lucie_nemo" / "model.py")
    assert not {"lucie_nemo.model", "lucie_nemo.recipe", "lucie_nemo.train"} & imported_modules(
        ROOT / "lucie_nemo" / "cpu_support.py")


def test_converters_import_nothing_above_them():
    """converters/ builds on lucie_nemo's models, phases and recipes, never on the training entry point or the CLI
    (which import the converters)."""
    modules = {path.relative_to(ROOT): imported_modules(path) for path in (ROOT / "converters").rglob("*.py")}
    assert Path("converters/universal/checkpoint.py") in modules and len(modules) > 20
    upward = {str(path): sorted(name for name in names if name == "lucie_nemo.train" or name.startswith("lucie_nemo.cli"))
              for path, names in modules.items()}
    assert {path: names for path, names in upward.items() if names} == {}
