"""The ``key=value`` overrides that README.md and docs/ show in `lucie train` and `lucie launch` examples are ones the
recipes take: each applies to the tiny phase 1 recipe and sets its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"lucie (?:train|launch) [^`|\n]*")
OVERRIDE = re.compile(r"(?<=\s)([a-z_]+(?:\.[a-z_]+)+)=(\S+)")


def documented_overrides() -> list[tuple[str, str]]:
    found = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for command in COMMAND.findall(page.read_text("utf-8")):
            found.update(OVERRIDE.findall(command))
    return sorted(found)


def test_the_docs_show_overrides():
    keys = {key for key, _ in documented_overrides()}
    assert {"train.train_iters", "checkpoint.save_interval"} <= keys, keys


@pytest.mark.parametrize("key,value", documented_overrides())
def test_a_documented_override_applies_to_the_recipe(key, value, megatron_runtime):
    from lucie_nemo.leg_config import build_leg_config

    cfg, _ = build_leg_config("pretrain", overrides=[f"{key}={value}"], tiny=True, vocab_size=512)
    section, _, field = key.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = getattr(node, part)
    assert str(getattr(node, field)) == value
