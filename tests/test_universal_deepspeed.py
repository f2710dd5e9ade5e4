"""The universal checkpoint DeepSpeed itself wrote (``tests/fixtures/deepspeed_universal``, made by
``tests/fixtures/make_deepspeed_universal.py``: engine on the CPU, ZeRO-0 bf16 over two ranks, ds_to_universal):
read by ``converters/universal/checkpoint.py`` as the fork's converter maps it, and laid out as ``tests/universal_fixture.py``
writes the format, up to the differences listed in ``test_deepspeed_output_has_the_hand_written_layout``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lucie_nemo.architecture import LucieShape
from test_import_universal import original_hf_weights
from universal_fixture import parameters, write_universal

FIXTURE = Path(__file__).parent / "fixtures" / "deepspeed_universal" / "global_step2"
SHAPE = LucieShape(num_layers=2, hidden_size=32, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2,
                   vocab_size=256)
ITERATION = 2  # two optimizer steps: 512 samples of phase 1's rampup batch 256
STATES = ("fp32", "exp_avg", "exp_avg_sq")


@pytest.fixture
def vocabulary_256(monkeypatch):
    """The fixture's vocabulary is 256 (Lucie's 65,024 rows would make it 250 times bigger): the reader's Lucie
    vocabulary check is moved to it, nothing else."""
    from converters.universal import checkpoint as universal

    monkeypatch.setitem(universal._LUCIE_ARGS, "padded_vocab_size", SHAPE.vocab_size)


def _load(path: Path):
    return torch.load(path, weights_only=False)


def test_the_reader_refuses_the_fixture_only_for_its_vocabulary():
    from converters.universal.checkpoint import UniversalCheckpoint
    from lucie_nemo.errors import UserError

    with pytest.raises(UserError, match="args.padded_vocab_size is 256, a Lucie model has 65024"):
        UniversalCheckpoint(FIXTURE)


def test_the_reader_accepts_deepspeeds_output_with_its_run_facts(vocabulary_256):
    from converters.universal.checkpoint import UniversalCheckpoint, is_universal
    from converters.universal.facts import check_run_facts
    from lucie_nemo.phases import PRETRAIN

    assert is_universal(FIXTURE)
    checkpoint = UniversalCheckpoint(FIXTURE)
    assert checkpoint.shape == SHAPE
    assert (checkpoint.info.iteration, checkpoint.info.tokens) == (ITERATION, 512 * 4096)
    assert (checkpoint.info.global_steps, checkpoint.info.global_samples) == (2, 8)  # DeepSpeed's own count: 2 x 4
    assert checkpoint.phase() is PRETRAIN
    check_run_facts(checkpoint, PRETRAIN)  # args, consumed samples, tokens, scheduler: phase 1 after 2 steps


@pytest.mark.parametrize("state", STATES)
def test_the_readers_tensors_are_the_original_converters_mapping(vocabulary_256, state):
    from converters.layout import hf_tensors, select
    from converters.universal.checkpoint import UniversalCheckpoint

    checkpoint = UniversalCheckpoint(FIXTURE)
    reference = original_hf_weights(FIXTURE, state, dtype=torch.float32)
    ours = {item.name: select(checkpoint.megatron(item.source, item.layer, state), item, SHAPE) for item in hf_tensors(SHAPE)}
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == torch.float32 and torch.equal(ours[name], tensor), name
    if state == "fp32":  # trained weights, not the init: the norms moved away from their ones
        assert not torch.equal(ours["model.norm.weight"], torch.ones(SHAPE.hidden_size))


def test_deepspeed_output_has_the_hand_written_layout(tmp_path):
    """Same files, keys and per-parameter entries as tests/universal_fixture.py, except (DeepSpeed's real output):
    a per-parameter ``step.pt`` (torch's AdamW keeps a step per tensor; apex's FusedAdam on the GPUs keeps it in
    the param groups), ``param_shapes`` split per optimizer param group, param groups that list one flat fp32 tensor
    each (the BF16_Optimizer's) and carry Megatron's ``name``/``wd_mult``/``lr_mult``, ``shared_params`` ``{}`` and
    the universal_checkpoint_info patterns."""
    hand = write_universal(tmp_path / "global_step2", SHAPE, ITERATION)
    names = [name for name, _ in parameters(SHAPE)]
    assert sorted(p.name for p in FIXTURE.iterdir()) == sorted(p.name for p in hand.iterdir())
    assert sorted(p.name for p in (FIXTURE / "zero").iterdir()) == sorted([*names, "optimizer_state.pt"])
    for name, size in parameters(SHAPE):
        files = {p.name for p in (FIXTURE / "zero" / name).iterdir()}
        assert files == {p.name for p in (hand / "zero" / name).iterdir()} | {"step.pt"}, name
        assert int(_load(FIXTURE / "zero" / name / "step.pt")) == ITERATION
        for state in STATES:
            real, ours = _load(FIXTURE / "zero" / name / f"{state}.pt"), _load(hand / "zero" / name / f"{state}.pt")
            assert set(real) == set(ours), (name, state)
            assert {k: v for k, v in real.items() if k != "param"} == {k: v for k, v in ours.items() if k != "param"}
            assert real["param"].shape == size and real["param"].dtype == torch.float32

    real, ours = _load(FIXTURE / "mp_rank_00_model_states.pt"), _load(hand / "mp_rank_00_model_states.pt")
    assert set(real) == set(ours)
    assert set(vars(ours["args"])) <= set(vars(real["args"]))
    assert {k: v for k, v in vars(real["args"]).items() if k in vars(ours["args"]) and k != "params_dtype"} == \
        {k: v for k, v in vars(ours["args"]).items() if k != "params_dtype"}
    assert real["lr_scheduler"] == ours["lr_scheduler"]
    for key in ("module", "optimizer", "buffer_names", "frozen_param_shapes", "skipped_steps", "checkpoint_version",
                "iteration", "tokens"):
        assert real[key] == ours[key], key
    assert [set(group) for group in real["param_shapes"]] == [  # one dict per param group: matrices, then norms
        {name for name, size in parameters(SHAPE) if len(size) == 2}, {name for name, size in parameters(SHAPE) if len(size) == 1}]
    assert {k: v for group in real["param_shapes"] for k, v in group.items()} == ours["param_shapes"][0]
    assert (real["shared_params"], ours["shared_params"]) == ({}, None)
    info = real["universal_checkpoint_info"]
    assert {k: info[k] for k in ours["universal_checkpoint_info"]} == {**ours["universal_checkpoint_info"]}
    assert info["parameter_with_2_sub_params_cat_dim_0"] == [r"\d+.mlp.dense_h_to_4h.weight"]
    assert list(real["rng_state"][0]) == list(ours["rng_state"][0])

    real, ours = _load(FIXTURE / "zero" / "optimizer_state.pt"), _load(hand / "zero" / "optimizer_state.pt")
    assert set(real) == set(ours) and real["clip_grad"] == ours["clip_grad"] and real["partition_count"] == [2, 2]
    assert [group["params"] for group in real["param_groups"]] == [[0], [1]]  # one flat tensor per group
    for found, written in zip(real["param_groups"], ours["param_groups"], strict=True):
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert found[key] == written[key], key
        assert "step" not in found and written["step"] == ITERATION
        assert (found["name"], found["wd_mult"]) in {("wd_no_scale_lr", 1.0), ("no_wd_no_scale_lr", 0.0)}


def test_full_import_of_deepspeeds_output_carries_its_adam_state(vocabulary_256, tmp_path):
    from typer.testing import CliRunner

    from test_export import read_global
    from test_import_universal import _app

    result = CliRunner().invoke(_app(), ["import", str(FIXTURE), str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "phase pretrain iteration 2" in result.output and "Adam step 2" in result.output  # no step in its groups
    name = "optimizer.state.exp_avg_sq.decoder.layers.mlp.linear_fc2.weight"  # layers stacked
    saved = read_global(tmp_path / "run" / "iter_0000002", [name])[name][1]
    reference = torch.load(FIXTURE / "zero" / "3.mlp.dense_4h_to_h.weight" / "exp_avg_sq.pt", weights_only=True)["param"]
    assert torch.equal(saved, reference)
