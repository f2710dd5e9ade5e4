"""The offline GPU-node install (make wheelhouse, scripts/install_wheelhouse.py, lucie_nemo.node_check), on CPU.

The whole path: build the wheelhouse from the lock (needs the package index, as `make wheelhouse` does), then
install it with --no-index into a fresh virtualenv over a "node" Python that holds only a torch (this
checkout's own torch and what torch needs, linked into a new virtualenv: a node's Python is often a
virtualenv itself), then `lucie --help` and a 2-step tiny `lucie train` from the installed environment.
The selection against a node's `pip freeze` and the post-install checks are tested on their own.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lucie_nemo import node_check

REPO = Path(__file__).resolve().parents[1]
H200_FREEZE = REPO / "bench" / "results" / "h200-node-freeze.txt"
TORCH_ONLY_MAX_MIB = 200  # the full closure is about 185 MiB (docs/launching.md says which packages weigh)


def _load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheelhouse_script = _load_script("wheelhouse")
install_script = _load_script("install_wheelhouse")


def _torch_closure() -> list[metadata.Distribution]:
    """torch and every distribution it requires (markers evaluated here), as installed in this environment."""
    found, todo = {}, ["torch"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in found[name].requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def make_torch_only_node(folder: Path) -> Path:
    """A virtualenv holding only torch and its requirements (linked from this environment); its python."""
    venv.EnvBuilder(with_pip=True, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    purelib = install_script._purelib(python)
    for distribution in _torch_closure():
        for top in {file.parts[0] for file in distribution.files or () if file.parts[0] != ".."}:
            source, target = Path(distribution.locate_file(top)), purelib / top
            if source.exists() and not top.endswith(".pth") and not target.exists():
                target.symlink_to(source)
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, str]:
    """(wheelhouse, installed virtualenv, the installer's output) for a torch-only node."""
    root = tmp_path_factory.mktemp("offline")
    wheelhouse = root / "wheelhouse"
    build = subprocess.run([sys.executable, REPO / "scripts" / "wheelhouse.py", "--out", wheelhouse,
                            "--max-mib", str(TORCH_ONLY_MAX_MIB)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    node_python = make_torch_only_node(root / "node")
    target = root / "gpu-venv"
    install = subprocess.run([node_python, REPO / "scripts" / "install_wheelhouse.py", wheelhouse, "--venv", target],
                             capture_output=True, text=True, cwd=root)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return wheelhouse, target, install.stdout


def test_the_wheelhouse_holds_the_locked_wheels_and_never_torch(installed):
    wheelhouse, _, _ = installed
    pins = dict(line.split("==") for line in (wheelhouse / "requirements.txt").read_text().split())
    assert len(list(wheelhouse.glob("*.whl"))) == len(pins)
    assert pins["megatron-core"] == "0.19.2" and pins["megatron-bridge"] == "0.6.2"
    assert pins["lucie-nemo"] == metadata.version("lucie-nemo")
    assert all(pins[name] == metadata.version(name) for name in pins)  # the lock's versions
    assert not {"torch", "triton"} & set(pins) and not any(name.startswith("nvidia-cu") for name in pins)
    assert "torch>=2.3.0,>=2.6.0,>=2.8" in (wheelhouse / "node-requirements.txt").read_text().split()
    wheels = sorted(wheelhouse.glob("*.whl"))
    with pytest.raises(wheelhouse_script.WheelhouseError, match="more than 60 MiB; largest: .*--node-freeze"):
        wheelhouse_script.check_size(wheels, 60)


def test_offline_install_over_a_torch_only_node_imports_the_pinned_stack(installed):
    _, target, output = installed
    assert "node check OK: torch " in output
    assert "megatron-core 0.19.2, megatron-bridge 0.6.2, transformers 5.12.1" in output
    where = subprocess.run([target / "bin" / "python", "-c", "import lucie_nemo, torch; print(lucie_nemo.__file__); "
                            "print(torch.__file__)"], capture_output=True, text=True, cwd=target, check=True)
    package, torch_file = where.stdout.split()
    assert package.startswith(str(target))  # the wheel's copy, not this checkout
    assert not torch_file.startswith(str(target))  # the node's torch
    assert subprocess.run([target / "bin" / "lucie", "--help"], capture_output=True, cwd=target).returncode == 0


def test_a_tiny_lucie_train_runs_from_the_installed_environment(installed, tmp_path):
    _, target, _ = installed
    result = subprocess.run([target / "bin" / "lucie", "train", "pretrain", "--tiny", "--output-root", tmp_path,
                             "train.train_iters=2"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    checkpoints = tmp_path / "pretrain" / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_a_node_freeze_leaves_out_what_fits_and_carries_what_does_not():
    carry, node = wheelhouse_script.read_config()
    pins = [wheelhouse_script.installed_pin(name) for name in carry]
    freeze = wheelhouse_script.read_freeze(H200_FREEZE)  # the H200 node the GPU check ran on
    kept, left = wheelhouse_script.select(pins, node, freeze)
    kept_names, left_names = {pin.name for pin in kept}, {pin.name for pin in left}
    assert {"numpy", "pyarrow", "scipy", "pandas", "pytest"} <= left_names  # the node's versions fit
    assert {"transformers", "tokenizers"} <= kept_names  # 5.17.0 / 0.23.2 there; Bridge needs <=5.12.1
    assert "filelock" in kept_names  # a torch dependency, but 3.32.5 there and multi-storage-client needs >=4.1
    assert {"megatron-core", "megatron-bridge"} <= kept_names and "torch" not in kept_names
    with pytest.raises(wheelhouse_script.WheelhouseError, match=r"the node's torch 2.5.1 does not meet .*>=2.8"):
        wheelhouse_script.select(pins, node, {**freeze, "torch": Version("2.5.1")})


def test_node_check_names_a_shadowed_pin_and_a_misfit_node_package(tmp_path):
    (tmp_path / "requirements.txt").write_text("megatron-core==0.19.1\nnumpy==" + metadata.version("numpy") + "\n")
    (tmp_path / "node-requirements.txt").write_text("torch>=99\nnot-a-package-here>=1\n")
    assert node_check.pin_problems(tmp_path / "requirements.txt") == [
        "megatron-core==0.19.1: 0.19.2 is installed in its place (re-run scripts/install_wheelhouse.py)"]
    torch_version = metadata.version("torch")
    assert node_check.node_problems(tmp_path / "node-requirements.txt") == [
        f"torch {torch_version} on the node does not meet torch>=99 (the wheels' pins need it): "
        "use a node image with a fitting version",
        "not-a-package-here: the node has none; the wheels need not-a-package-here>=1"]
