"""Install wheelhouse/ (make wheelhouse) on a GPU node without network, over the node's own Python and torch.

    python3 scripts/install_wheelhouse.py [WHEELHOUSE] [--venv .venv-gpu]

Run it with the node's Python 3.12 (the one that has its CUDA torch). It makes a virtualenv that sees that
Python's packages, installs the wheels with --no-index (nothing is downloaded), then runs lucie_nemo.node_check
in it: the pinned versions import on the node's torch, or the failing pin is named. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# nvidia-resiliency-ext's wheels say glibc 2.39 but need 2.32 (scripts/setup_env.sh): installed by its tag.
TAGGED_BY_PLATFORM = {"nvidia-resiliency-ext": "manylinux_2_39_x86_64"}


def fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


def check_interpreter() -> None:
    if sys.version_info[:2] != (3, 12) or platform.machine() != "x86_64":
        fail(f"the wheelhouse is for CPython 3.12 on x86-64; this is {platform.python_version()} on "
             f"{platform.machine()} ({sys.executable}): run it with the node's Python 3.12")
    if importlib.util.find_spec("torch") is None:  # the node's own build, with its CUDA
        fail(f"{sys.executable} has no torch: run this with the Python that has the node's torch")


def node_site_packages() -> list[str]:
    """This interpreter's package folders. `venv --system-site-packages` would see only the base
    installation's; when the node's Python is itself a virtualenv (as in many images and clusters), its
    torch is in that virtualenv's folders, so the new environment names them in a .pth file instead."""
    import site

    return [folder for folder in site.getsitepackages() if Path(folder).is_dir()]


def _purelib(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())


def make_venv(folder: Path) -> tuple[Path, Path]:
    """A virtualenv at ``folder`` whose imports fall back to this interpreter's packages: (python, purelib)."""
    shutil.rmtree(folder, ignore_errors=True)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    purelib = _purelib(python)
    # after the environment's own folder, so that the wheelhouse's versions come first
    (purelib / "_node_packages.pth").write_text("".join(f"{folder}\n" for folder in node_site_packages()))
    return python, purelib


def pip_install(python: Path, wheelhouse: Path, requirements: list[str], *extra: str) -> None:
    command = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "install",
               "--no-index", "--no-deps", "--ignore-installed", "--no-cache-dir", "--find-links", str(wheelhouse),
               *extra, *requirements]
    if subprocess.run(command).returncode != 0:
        fail(f"pip could not install {', '.join(requirements)} from {wheelhouse} (see above)")


def install(wheelhouse: Path, target: Path) -> None:
    lines = (wheelhouse / "requirements.txt").read_text().split() if (wheelhouse / "requirements.txt").is_file() else []
    if not lines:
        fail(f"{wheelhouse} has no requirements.txt: build it with `make wheelhouse` on a machine with network")
    tagged = [line for line in lines if line.split("==")[0] in TAGGED_BY_PLATFORM]
    staging = target.with_name(target.name + ".partial")
    python, purelib = make_venv(staging)
    pip_install(python, wheelhouse, [line for line in lines if line not in tagged])
    for line in tagged:
        pip_install(python, wheelhouse, [line], "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", TAGGED_BY_PLATFORM[line.split("==")[0]],
                    "--target", str(purelib), "--upgrade")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    _retarget(staging, target)


def _retarget(old: Path, new: Path) -> None:
    """Console scripts, activate and pyvenv.cfg name the environment by its staging path: use the final one."""
    for path in [new / "pyvenv.cfg", *(new / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            text = path.read_bytes()
            if str(old).encode() in text:
                path.write_bytes(text.replace(str(old).encode(), str(new).encode()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheelhouse", type=Path, nargs="?", default=REPO / "wheelhouse")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-gpu", help="the environment to create")
    args = parser.parse_args()
    check_interpreter()
    wheelhouse, target = args.wheelhouse.resolve(), args.venv.resolve()
    install(wheelhouse, target)
    check = subprocess.run([str(target / "bin" / "python"), "-m", "lucie_nemo.node_check", str(wheelhouse)])
    if check.returncode != 0:
        raise SystemExit(check.returncode)
    print(f"installed: {target} (activate: source {target}/bin/activate; or run {target}/bin/lucie)")


if __name__ == "__main__":
    main()
