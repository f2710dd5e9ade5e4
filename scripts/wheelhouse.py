"""Write wheelhouse/: the pinned wheels an offline GPU node needs, for Python 3.12 on x86-64 manylinux.

Run by `make wheelhouse` with the project's .venv: every version is the one installed there (the lock,
requirements.txt). The packages are wheelhouse.toml's ``carry`` list, less those the node already has at a
version that fits (``--node-freeze``: the node's own `pip freeze`), plus lucie-nemo's own wheel. The node's
torch (``node`` list) is never carried. Besides the wheels, the folder holds:

- ``requirements.txt``: the wheels to install, ``name==version`` (read by scripts/install_wheelhouse.py);
- ``node-requirements.txt``: what the wheels expect the node to have, with the carried packages'
  version requirements on it (e.g. ``torch>=2.6.0``), checked after the install by lucie_nemo.node_check.

The folder is written under a temporary name and renamed when complete; more than --max-mib is refused.

    .venv/bin/python scripts/wheelhouse.py [--out wheelhouse] [--node-freeze node-freeze.txt]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "wheelhouse.toml"
MIB = 1024**2
DEFAULT_MAX_MIB = 60
FETCH_WORKERS = 6
# pip matches manylinux tags exactly: every glibc level a pinned wheel may name, up to nvidia-resiliency-ext's
# 2.39 (its wheels say 2.39 but need 2.32: scripts/install_wheelhouse.py installs it by tag, as setup_env.sh).
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)
]


class WheelhouseError(RuntimeError):
    """A wheelhouse that cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    @property
    def line(self) -> str:
        return f"{self.name}=={self.version}"


def read_config(path: Path = CONFIG) -> tuple[list[str], list[str]]:
    config = tomllib.loads(path.read_text())
    return config["carry"], config["node"]


def installed_pin(name: str) -> Pin:
    try:
        return Pin(canonicalize_name(name), metadata.version(name))
    except metadata.PackageNotFoundError:
        raise WheelhouseError(f"{name} (wheelhouse.toml) is not installed in {sys.prefix}: run `make setup` first") from None


def requirements_on(target: str, pins: list[Pin]) -> SpecifierSet:
    """Every version requirement that the pinned packages place on ``target`` (extras and markers excluded)."""
    combined = SpecifierSet()
    for pin in pins:
        for text in metadata.requires(pin.name) or ():
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) != target:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            combined &= requirement.specifier
    return combined


def read_freeze(path: Path) -> dict[str, Version]:
    """``name==version`` lines of a `pip freeze` (other lines: editable installs, URLs, comments, skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            found[canonicalize_name(match[1])] = Version(match[2])
    if not found:
        raise WheelhouseError(f"{path} lists no name==version line: pass the output of `pip freeze` on the node")
    return found


def _fits(name: str, version: Version | None, pins: list[Pin]) -> bool:
    return version is not None and requirements_on(name, pins).contains(version, prereleases=True)


def select(carry: list[Pin], node: list[str], node_freeze: dict[str, Version]) -> tuple[list[Pin], list[Pin]]:
    """(to carry, left to the node): a package leaves when the node's version meets every requirement on it.
    One of the node's own (``node``) is carried only where the freeze shows a version that does not fit;
    torch never is."""
    kept = [pin for pin in carry if not _fits(pin.name, node_freeze.get(pin.name), carry)]
    left = [pin for pin in carry if pin not in kept]
    for name in map(canonicalize_name, node):
        version = node_freeze.get(name)
        if version is None or _fits(name, version, carry):
            continue
        if name == "torch":
            raise WheelhouseError(f"the node's torch {version} does not meet {requirements_on(name, carry)} "
                                  "(the pinned stack's requirement): use a node image with a newer torch")
        kept.append(installed_pin(name))
    return kept, left


def _pip(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *arguments],
                          capture_output=True, text=True)


def fetch_wheel(pin: Pin, folder: Path) -> None:
    """The pinned wheel for CPython 3.12 on x86-64 manylinux; a pure-Python sdist is built into a wheel."""
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    binary = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                  "--implementation", "cp", *platforms, "-d", str(folder), pin.line)
    if binary.returncode == 0:
        return
    built = _pip("wheel", "--no-deps", "-w", str(folder), pin.line)  # sdist only (antlr4-python3-runtime 4.9.3)
    wheels = list(folder.glob(f"{pin.name.replace('-', '_')}-{pin.version}-*.whl"))
    if built.returncode != 0 or not wheels:
        raise WheelhouseError(f"no wheel of {pin.line} for Python 3.12 x86-64:\n{binary.stderr.strip()}\n{built.stderr.strip()}")
    if not wheels[0].name.endswith("-none-any.whl"):
        raise WheelhouseError(f"{wheels[0].name} was built for this machine, not for any x86-64 node: "
                              "pin a version with a manylinux wheel")


def build_own_wheel(folder: Path) -> Pin:
    result = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), str(REPO))
    if result.returncode != 0:
        raise WheelhouseError(f"cannot build lucie-nemo's wheel:\n{result.stderr.strip()}")
    shutil.rmtree(REPO / "build", ignore_errors=True)  # setuptools' scratch folder
    return installed_pin("lucie-nemo")


def node_requirements(node: list[str], left: list[Pin], carried: list[Pin]) -> list[str]:
    """What the carried packages expect on the node: its torch stack and what --node-freeze left there."""
    carried_names = {pin.name for pin in carried}
    names = [name for name in map(canonicalize_name, node) if name not in carried_names] + [pin.name for pin in left]
    return [f"{name}{requirements_on(name, carried)}" for name in names]


def check_size(wheels: list[Path], max_mib: float) -> int:
    """The wheels' total bytes; more than ``max_mib`` is refused with the largest ones named."""
    size = sum(wheel.stat().st_size for wheel in wheels)
    if size > max_mib * MIB:
        largest = ", ".join(f"{w.name} ({w.stat().st_size / MIB:.1f} MiB)"
                            for w in sorted(wheels, key=lambda w: -w.stat().st_size)[:3])
        raise WheelhouseError(f"the wheels take {size / MIB:.1f} MiB, more than {max_mib:g} MiB; largest: {largest}. "
                              "Pass the node's `pip freeze` as --node-freeze to leave out what it has, "
                              "or raise --max-mib")
    return size


def build(out: Path, node_freeze: Path | None = None, max_mib: float = DEFAULT_MAX_MIB) -> list[Pin]:
    carry_names, node_names = read_config()
    pins = [installed_pin(name) for name in carry_names]
    carried, left = select(pins, node_names, read_freeze(node_freeze) if node_freeze else {})
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:  # each fetch is a pip process, mostly waiting
        list(tqdm(pool.map(lambda pin: fetch_wheel(pin, staging), carried), total=len(carried), desc="wheels",
                  unit="wheel"))
    carried.append(build_own_wheel(staging))
    wheels = sorted(staging.glob("*.whl"))
    if len(wheels) != len(carried):
        raise WheelhouseError(f"{len(wheels)} wheels for {len(carried)} packages in {staging}: a name is listed twice")
    size = check_size(wheels, max_mib)
    (staging / "requirements.txt").write_text("".join(f"{pin.line}\n" for pin in carried))
    (staging / "node-requirements.txt").write_text("".join(
        f"{line}\n" for line in node_requirements(node_names, left, carried)))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    print(f"{out}: {len(wheels)} wheels, {size / MIB:.1f} MiB"
          + (f"; left to the node: {', '.join(pin.line for pin in left)}" if left else ""))
    return carried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "wheelhouse")
    parser.add_argument("--node-freeze", type=Path, help="the node's `pip freeze`: leave out what it has that fits")
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB)
    args = parser.parse_args()
    try:
        build(args.out, args.node_freeze, args.max_mib)
    except WheelhouseError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
