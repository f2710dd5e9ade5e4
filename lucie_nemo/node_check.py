"""Check an environment installed from a wheelhouse (scripts/install_wheelhouse.py runs it there).

    python -m lucie_nemo.node_check WHEELHOUSE

Three checks, each failure named with its fix: every wheel's pinned version is the one Python imports
(no node package in its way); what the wheels expect of the node (its torch, ...) is there at a version that
meets their requirements (``node-requirements.txt``); the training stack imports on the node's torch. Prints
the versions and the GPU seen; exits 1 on any failure.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

STACK_MODULES = ("megatron.core", "megatron.bridge.training.pretrain", "lucie_nemo.train", "converters.export",
                 "converters.verify")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def pin_problems(requirements: Path) -> list[str]:
    """Each ``name==version`` of the wheelhouse that is not the version installed here."""
    problems = []
    for line in _lines(requirements):
        name, version = line.split("==")
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line}: not installed (re-run scripts/install_wheelhouse.py)")
            continue
        if Version(found) != Version(version):
            problems.append(f"{line}: {found} is installed in its place (re-run scripts/install_wheelhouse.py)")
    return problems


def node_problems(node_requirements: Path) -> list[str]:
    """Each package the wheels expect from the node that is missing or of a version they do not accept."""
    problems = []
    for line in _lines(node_requirements):
        requirement = Requirement(line)
        try:
            found = Version(metadata.version(requirement.name))
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name}: the node has none; the wheels need {line}")
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            problems.append(f"{requirement.name} {found} on the node does not meet {line} (the wheels' pins need it): "
                            "use a node image with a fitting version")
    return problems


def import_problems() -> list[str]:
    """Each stack module that does not import here, with the reason (a missing package is named)."""
    try:
        from lucie_nemo import runtime

        runtime.prepare()
        for module in STACK_MODULES:
            __import__(module)
    except Exception as error:  # an import fails in many ways on a mismatched node; report it as it is
        return [f"the training stack does not import: {type(error).__name__}: {error}"
                + (" (add its package to wheelhouse.toml, then `make wheelhouse`)"
                   if isinstance(error, ModuleNotFoundError) else "")]
    return []


def describe() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("megatron-core", "megatron-bridge", "transformers"))
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}, {device}); {versions}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lucie_nemo.node_check WHEELHOUSE", file=sys.stderr)
        return 2
    wheelhouse = Path(argv[0])
    problems = pin_problems(wheelhouse / "requirements.txt") + node_problems(wheelhouse / "node-requirements.txt")
    if not problems:
        problems = import_problems()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"node check OK: {describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
