"""`lucie report` on one tiny CPU run (phase 1 for 6 steps, phase 2 for 2): the figure's data, the
summary, deviations planted into copies of the run, the original run's logs overlaid, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub

from lucie_nemo.demo_scale import LR_MULTIPLIER, demo_phases
from lucie_nemo.phases import PHASES
from lucie_nemo.report import write_report
from lucie_nemo.report.figure import report_figure
from lucie_nemo.report.plan import read_run_plan
from lucie_nemo.report.status import run_status
from lucie_nemo.schedule import PhaseSchedule

TINY = demo_phases()
PRETRAIN_STEPS, EXTENSION_STEPS = 6, 2
ORIGINAL_COLUMNS = "training_steps,training_tokens,training_loss,walltime,gputime,learning_rate"


def _lucie(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lucie_nemo.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """The one training run of this module: `lucie train --tiny` phase 1 then phase 2."""
    root = tmp_path_factory.mktemp("run")
    for phase, steps in (("pretrain", PRETRAIN_STEPS), ("extension", EXTENSION_STEPS)):
        result = _lucie("train", phase, "--tiny", "--vocab-size", "512", "--output-root", str(root),
                        f"train.train_iters={steps}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def _copy(run_root: Path, target: Path, plan: bool = True) -> Path:
    """The run's event files (and plan.json) without its checkpoints: what a deviation test needs."""
    for phase in ("pretrain", "extension"):
        shutil.copytree(run_root / phase / "tensorboard", target / phase / "tensorboard")
        if plan:
            shutil.copy(run_root / phase / "plan.json", target / phase / "plan.json")
    return target


def _plant(run_dir: Path, tag: str, values: dict[int, float]) -> None:
    """A later event file (a restarted trainer) logging ``values`` of ``tag``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"), filename_suffix=".planted")
    for step, value in values.items():
        writer.add_scalar(tag, value, step)
    writer.close()


def _axes(figure) -> dict[str, object]:
    return {axis.get_title().split(" (")[0]: axis for axis in figure.axes if axis.get_title()}


def _line(axis, label: str):
    return next(line for line in axis.get_lines() if line.get_label() == label)


def _pretrain_tokens(step: int) -> int:
    return PhaseSchedule(TINY["pretrain"], TINY).tokens(step)


def test_the_run_records_its_scaled_plan(run_root):
    plan = read_run_plan(run_root / "pretrain", "pretrain")
    assert plan.recorded and plan.phase == TINY["pretrain"] and plan.train_iters == PRETRAIN_STEPS
    assert plan.world_size == 1 and plan.device is None and plan.model.vocab_size == 512
    assert read_run_plan(run_root / "extension", "extension").phase == TINY["extension"]
    assert read_run_plan(run_root / "anneal", "anneal").phase == PHASES["anneal"]  # nothing recorded: Lucie's facts


def test_figure_has_every_panel_with_the_run_and_its_plan(run_root):
    phases = run_status(run_root)
    assert [status.name for status in phases] == ["pretrain", "extension"]
    axes = _axes(report_figure(phases))
    assert set(axes) == {"Training loss", "Learning rate", "Global batch", "Throughput"}
    pretrain_plan = PhaseSchedule(TINY["pretrain"], TINY)
    extension_plan = PhaseSchedule(TINY["extension"], TINY)
    offset = _pretrain_tokens(PRETRAIN_STEPS)

    # loss against cumulative tokens: consumed samples x sequence, phase 2 after phase 1's tokens
    loss = axes["Training loss"]
    pretrain, extension = _line(loss, "pretrain"), _line(loss, "extension")
    assert list(pretrain.get_xdata()) == [_pretrain_tokens(s) for s in range(1, PRETRAIN_STEPS + 1)]
    assert list(extension.get_xdata()) == [offset + extension_plan.tokens(s) for s in range(1, EXTENSION_STEPS + 1)]
    assert all(4.0 < value < 7.0 for value in pretrain.get_ydata())  # about ln(512) = 6.2 and falling
    marks = _line(loss, "checkpoints")  # a save per rampup batch change (steps 2-6), then phase 2's last step
    assert list(marks.get_xdata()) == [_pretrain_tokens(s) for s in range(2, 7)] + [offset + extension_plan.tokens(2)]
    assert {text.get_text() for text in loss.texts} == {"step0000006", "extension_step0000002"}

    # LR and batch against the cumulative step: the plan's line and the logged dots agree
    for title, tag, planned in (("Learning rate", "lr", pretrain_plan.lr),
                                ("Global batch", "batch", pretrain_plan.global_batch_size)):
        axis = axes[title]
        line, dots = _line(axis, "pretrain plan"), _line(axis, "pretrain logged")
        assert list(line.get_xdata()) == list(range(1, PRETRAIN_STEPS + 1))
        assert list(line.get_ydata()) == [planned(s) for s in range(1, PRETRAIN_STEPS + 1)]
        assert list(dots.get_xdata()) == list(range(1, PRETRAIN_STEPS + 1))
        assert list(dots.get_ydata()) == pytest.approx(list(line.get_ydata()), rel=1e-6)
        assert list(_line(axis, "extension logged").get_xdata()) == [7, 8]
        assert not [line for line in axis.get_lines() if "deviation" in line.get_label()]
    assert list(_line(axes["Global batch"], "pretrain logged").get_ydata()) == [4, 4, 5, 6, 7, 8]  # the rampup

    rates = _line(axes["Throughput"], "pretrain")
    assert list(rates.get_xdata()) == list(range(1, PRETRAIN_STEPS + 1)) and min(rates.get_ydata()) > 0


def test_report_files_and_json_of_a_correct_run(run_root, tmp_path):
    result = _lucie("report", str(run_root), "--output", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["deviation_count"] == 0
    pretrain, extension = summary["phases"]
    assert (pretrain["steps_done"], pretrain["steps_planned"], pretrain["tokens"]) == (6, 6, _pretrain_tokens(6))
    assert pretrain["last_checkpoint"] == {"step": 6, "revision": "step0000006"}
    assert pretrain["eta_seconds"] == 0 and pretrain["plan"] == "plan.json"
    assert (extension["steps_done"], extension["tokens"]) == (2, 2 * TINY["extension"].global_batch_size * 2_000)
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| pretrain | 6 / 6 | 8,704 |" in markdown and "None: every logged LR and global batch" in markdown


def test_a_wrong_lr_at_one_step_is_reported_and_exits_1(run_root, tmp_path):
    root = _copy(run_root, tmp_path / "run")
    planned = PhaseSchedule(TINY["pretrain"], TINY).lr(4)
    _plant(root / "pretrain", "learning-rate", {4: planned * 1.001})
    result = _lucie("report", str(root), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["deviation_count"] == 1
    (deviation,) = summary["phases"][0]["deviations"]
    assert (deviation["step"], deviation["quantity"]) == (4, "learning-rate")
    assert deviation["planned"] == pytest.approx(planned) and deviation["logged"] == pytest.approx(planned * 1.001)
    assert "step 4: learning-rate logged" in (root / "report" / "report.md").read_text()
    marks = _line(_axes(report_figure(run_status(root)))["Learning rate"], "pretrain deviation")
    assert list(marks.get_xdata()) == [4]


def test_a_batch_that_ignores_the_rampup_is_reported(run_root, tmp_path):
    root = _copy(run_root, tmp_path / "run")
    final = TINY["pretrain"].global_batch_size
    _plant(root / "pretrain", "batch-size", {step: final for step in range(1, PRETRAIN_STEPS + 1)})
    result = _lucie("report", str(root))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "**pretrain**: 6 deviating value(s)" in result.stdout
    assert "step 1: batch-size logged 16, planned 4" in result.stdout


def test_without_plan_json_the_full_size_phase_is_the_plan(run_root, tmp_path):
    root = _copy(run_root, tmp_path / "run", plan=False)
    phases = run_status(root)
    assert phases[0].plan.phase == PHASES["pretrain"] and not phases[0].plan.recorded
    assert phases[0].deviations[0].step == 1  # the tiny run's LR is not Lucie-7B's


def _original_repository(folder: Path) -> Path:
    """Published-format logs: phase 1 counted from the start, phase 2 from its own start."""
    lucie = PhaseSchedule(PHASES["pretrain"])
    rows = {"1_pretraining": [(s, lucie.tokens(s), 10.0 - s / 1e5, 3e-4) for s in (1_000, 2_000, 753_851)],
            "2_extension": [(s, s * 128 * 32_000, 2.0, 2e-5) for s in (25, 50)]}
    for name, values in rows.items():
        path = folder / "metadata" / "training_logs" / name / "training_logs.csv"
        path.parent.mkdir(parents=True)
        path.write_text(ORIGINAL_COLUMNS + "\n" + "".join(f"{s},{t},{l},0,0,{lr}\n" for s, t, l, lr in values))
    return folder


def test_original_logs_are_overlaid_on_the_run_scale(run_root, tmp_path):
    from lucie_nemo.report.original import load_original

    original = load_original(str(_original_repository(tmp_path / "Lucie-7B")))
    assert [o.phase for o in original] == ["pretrain", "extension"]
    assert original[1].steps == [753_851 + 25, 753_851 + 50]  # counted on from phase 1
    axes = _axes(report_figure(run_status(run_root), original))
    label = "original Lucie-7B (rescaled to this run's plan)"
    lucie, tiny = PhaseSchedule(PHASES["pretrain"]), PhaseSchedule(TINY["pretrain"], TINY)
    ratio = tiny.tokens(tiny.train_iters) / lucie.tokens(lucie.train_iters)
    loss = _line(axes["Training loss"], label)
    # phase 1 rows up to the run's 6 planned steps: step 1,000 of 753,851 maps to step 0.0085 of 322
    assert list(loss.get_xdata()) == pytest.approx([lucie.tokens(1_000) * ratio, lucie.tokens(2_000) * ratio])
    assert list(loss.get_ydata()) == [10.0 - 0.01, 10.0 - 0.02]
    lr = _line(axes["Learning rate"], label)
    assert list(lr.get_ydata()) == pytest.approx([3e-4 * LR_MULTIPLIER] * 2)


def test_original_logs_fetched_from_the_hub(run_root, tmp_path):
    source = _original_repository(tmp_path / "copy")
    files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*.csv")}
    with FakeHub() as hub:
        hub.seed("OpenLLM-France/Lucie-7B", "main", {**files, "README.md": b"card"})
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        result = _lucie("report", str(run_root), "--output", str(tmp_path / "out"), "--json",
                        "--original", "OpenLLM-France/Lucie-7B", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["original"] == {"pretrain": 3, "extension": 2}
        downloads = {r.path for r in hub.requests if "/resolve/" in r.path and r.method == "GET"}
        assert {path.split("/resolve/")[1].split("/", 1)[1] for path in downloads} == set(files)  # not the card
        missing = _lucie("report", str(run_root), "--output", str(tmp_path / "out2"), "--original",
                         "OpenLLM-France/Nothing", env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot fetch the training logs")


def test_no_tensorboard_data_and_corrupt_event_files_give_one_error_line(run_root, tmp_path):
    (tmp_path / "empty" / "pretrain" / "tensorboard").mkdir(parents=True)
    result = _lucie("report", str(tmp_path / "empty"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: no TensorBoard training scalars under")

    root = _copy(run_root, tmp_path / "run")
    event_file = next((root / "extension" / "tensorboard").glob("events.out.tfevents.*"))
    data = bytearray(event_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a record
    event_file.write_bytes(bytes(data))
    result = _lucie("report", str(root))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: corrupt TensorBoard event file {event_file}")
    assert not (root / "report").exists()  # nothing half-written


def test_the_title_names_the_run_not_a_path(run_root, tmp_path, monkeypatch):
    import lucie_nemo.report.figure as figure
    from lucie_nemo.report import run_name

    titles, draw = [], figure.report_figure
    monkeypatch.setattr(figure, "report_figure", lambda *args, title="", **kwargs: titles.append(title) or draw(*args, title=title, **kwargs))
    write_report(_copy(run_root, tmp_path / "demo15" / "runs"))
    assert titles == ["lucie report: demo15"]
    assert run_name(Path("/tmp/demo15/runs")) == "demo15"  # the demo's WORKDIR/runs
    assert run_name(Path("/lustre/lucie/pretrain-a")) == "pretrain-a"
    monkeypatch.chdir(tmp_path)
    assert run_name(Path("runs")) == tmp_path.name  # lucie train's default output root, relative
