"""Megatron-Bridge's import noise without Transformer Engine stays off the console, and only that noise."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from lucie_nemo import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is not None,
                    reason="with Transformer Engine, FP8GlobalStateManager imports and nothing is logged")
def test_the_fp8_state_manager_traceback_stays_off_the_console():
    """Importing Megatron-Bridge logs the failed import of FP8GlobalStateManager with its traceback at INFO;
    lucie_nemo.model, through which lucie's code imports Megatron-Bridge, keeps it off stderr (logging at INFO)."""
    probe = "import logging; logging.basicConfig(level=logging.INFO); import lucie_nemo.model"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "FP8GlobalStateManager" not in result.stderr, result.stderr


def test_only_that_message_is_dropped(caplog):
    runtime.quiet_imports()
    logger = logging.getLogger("megatron.bridge.utils.import_utils")
    with caplog.at_level(logging.INFO):
        logger.info(f"{runtime.FP8_STATE_MANAGER_IMPORT} with: Traceback (most recent call last): ...")
        logger.info("Import of Foo from megatron.core.bar failed with: Traceback (most recent call last): ...")
        logger.error(f"{runtime.FP8_STATE_MANAGER_IMPORT} with: an error")
    assert [record.getMessage() for record in caplog.records] == [
        "Import of Foo from megatron.core.bar failed with: Traceback (most recent call last): ...",
        f"{runtime.FP8_STATE_MANAGER_IMPORT} with: an error"]
