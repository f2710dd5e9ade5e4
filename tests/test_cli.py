"""The `lucie` command line: model facts, schedule lines, HF config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def lucie(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lucie_nemo.cli", *args], capture_output=True, text=True, timeout=300)


def test_model_info_json_reports_the_exact_parameter_count():
    result = lucie("model", "info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == 6_706_958_336
    assert info["layout"]["data_parallel"] == 32 and info["layout"]["tensor_parallel"] == 4
    assert info["layout"]["layers_per_pipeline_stage"] == 8


def test_schedule_steps_lines():
    result = lucie("schedule", "pretrain", "--steps", "1,19337,753851")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 19_337, 753_851]
    assert lines[0] == {
        "phase": "pretrain", "step": 1, "cumulative_step": 1, "global_batch_size": 256, "consumed_samples": 256,
        "tokens": 256 * 4096, "cumulative_tokens": 256 * 4096, "lr": pytest.approx(3e-4 * 256 / 2e6),
    }
    assert lines[1]["global_batch_size"] == 1_024
    assert lines[2]["lr"] == pytest.approx(3e-5)


def test_schedule_revisions_of_extension():
    result = lucie("schedule", "extension", "--revisions")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["revision"] for line in lines] == [
        "extension_step0000250", "extension_step0000500", "extension_step0000750",
        "extension_step0001000", "extension_step0001220",
    ]
    assert lines[0]["cumulative_step"] == 754_101
    assert lines[-1]["cumulative_tokens"] == 762_144_064 * 4096 + 156_160 * 32_000


def test_schedule_rejects_bad_input_clearly():
    result = lucie("schedule", "warmup", "--steps", "1")
    assert result.returncode == 2
    assert "unknown phase 'warmup': choose one of pretrain, extension, anneal" in result.stderr
    result = lucie("schedule", "anneal", "--steps", "5000")
    assert result.returncode == 2 and "step 5000 is outside phase 'anneal' (0..1220)" in result.stderr
    assert "Traceback" not in result.stderr


def test_hf_config_of_extension_step():
    result = lucie("model", "hf-config", "--phase", "extension", "--step", "250")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["rope_theta"] == 20_000_000 and config["max_position_embeddings"] == 32_000
    assert config["rope_scaling"] is None and config["torch_dtype"] == "bfloat16"
    assert (config["training_steps"], config["training_tokens"]) == (754_101, 762_144_064 * 4096 + 250 * 128 * 32_000)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["vocab_size"]) == (32, 8, 65_024)
