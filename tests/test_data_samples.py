"""`lucie data samples`: what a step's global batch holds, read through the datasets `lucie train` builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.original_order_data import BLEND_CASES, VOCAB, write_datasets

VOCAB_SIZE = 5_120  # the tiny model's vocabulary: above the synthetic tokens (< VOCAB)
RECORD_BATCHES = """
import functools, sys
import numpy as np
from lucie_nemo import runtime
runtime.prepare()
import megatron.bridge.training.gpt_step as gpt_step
from lucie_nemo.train import train_phase

seen, original = [], gpt_step.forward_step

class Recorder:
    def __init__(self, iterator):
        self.iterator = iterator
    def __iter__(self):
        return self
    def __next__(self):
        batch = next(self.iterator)
        seen.append(np.concatenate([batch["tokens"].numpy(), batch["labels"][:, -1:].numpy()], axis=1))
        return batch

@functools.wraps(original)
def forward_step(state, data_iterator, model, *args, **kwargs):
    return original(state, Recorder(data_iterator), model, *args, **kwargs)

gpt_step.forward_step = forward_step
data_root, blend, output, out = sys.argv[1:5]
train_phase("pretrain", tiny=True, vocab_size=%d, data_root=data_root, blend_file=blend, output_root=output,
            overrides=["train.train_iters=2"])
np.save(out, np.concatenate(seen))
""" % VOCAB_SIZE


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    write_datasets(root)
    blend = root / "blend.txt"
    blend.write_text(" ".join(f"{weight} {name}" for name, weight in BLEND_CASES["years"]) + "\n")
    return root, blend


def samples(data, *options: str) -> subprocess.CompletedProcess:
    root, blend = data
    command = [sys.executable, "-m", "lucie_nemo.cli", "data", "samples", "pretrain", "--tiny", "--data-root",
               str(root), "--blend-file", str(blend), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})


def test_the_first_batches_lucie_train_trains_on_are_the_windows_lucie_data_samples_gives(data, tmp_path) -> None:
    root, blend = data
    trained = tmp_path / "trained.npy"
    run = subprocess.run([sys.executable, "-c", RECORD_BATCHES, str(root), str(blend), str(tmp_path / "runs"),
                          str(trained)], capture_output=True, text=True, timeout=600, env={**os.environ})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = samples(data, "--range", "0:8", "--tokens-out", str(tmp_path / "windows.npy"))
    assert printed.returncode == 0, printed.stderr[-3000:]
    windows = np.load(tmp_path / "windows.npy")
    assert windows.shape == (8, 257) and windows.dtype == np.int64  # steps 1 and 2: 4 samples each, seq 256 + 1
    assert int(windows.max()) < VOCAB
    assert np.array_equal(np.load(trained), windows)


def test_a_steps_table_and_json(data, tmp_path) -> None:
    table = samples(data, "--step", "2")
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["sample", "step", "offset", "prefix:", "documents"]
    assert [line.split()[:2] for line in lines[1:]] == [["4", "2"], ["5", "2"], ["6", "2"], ["7", "2"]]
    as_json = samples(data, "--step", "2", "--json")
    rows = json.loads(as_json.stdout)
    assert [row["sample"] for row in rows] == [4, 5, 6, 7]
    for row, line in zip(rows, lines[1:]):
        prefix, documents = line.split(None, 3)[3].split(": ")
        assert Path(row["prefix"]).name == prefix
        assert row["documents"] == [int(document) for document in documents.split(",")]
        assert str(row["offset"]) == line.split()[2]


@pytest.mark.parametrize(("options", "message"), [
    ((), "give one of --step N or --range A:B"),
    (("--step", "1", "--range", "0:4"), "give one of --step N or --range A:B"),
    (("--range", "4:2"), "--range '4:2' needs 0 <= A < B"),
    (("--step", "0"), "steps are counted from 1"),
    (("--range", "0:4", "--data-order", "random"), "unknown data order 'random'"),
    (("--range", "0:4", "--tokens-out", "windows.txt"), "--tokens-out windows.txt must end in .npy"),
])
def test_bad_input_is_one_clear_line(data, options, message) -> None:
    from typer.testing import CliRunner

    from lucie_nemo.cli import app

    root, blend = data
    result = CliRunner().invoke(app, ["data", "samples", "pretrain", "--tiny", "--data-root", str(root),
                                      "--blend-file", str(blend), *options])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_the_recipe_reads_a_blend_in_the_phases_data_order(data, megatron_runtime) -> None:
    from megatron.bridge.training.config import GPTDatasetConfig

    from lucie_nemo.data.order_config import OriginalOrderDatasetConfig
    from lucie_nemo.leg_config import build_leg_config

    root, blend = data
    original, _ = build_leg_config("pretrain", tiny=True, data_root=root, blend_file=blend)
    assert isinstance(original.dataset, OriginalOrderDatasetConfig)
    assert original.dataset.train_samples == 762_144_586 // 150_000  # the tiny phase's, not train_iters x batch
    assert original.dataset.gpt.path_to_cache == str(root / "index-cache")
    megatron, _ = build_leg_config("pretrain", tiny=True, data_root=root, blend_file=blend,
                                   phase_overrides={"data_order": "megatron"})
    assert type(megatron.dataset) is GPTDatasetConfig
    assert megatron.dataset.blend == original.dataset.gpt.blend
