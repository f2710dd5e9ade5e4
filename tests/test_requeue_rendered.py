"""The requeue logic of the batch script that `lucie launch --dry-run` renders, run with bash.

The script is rendered once (`lucie launch pretrain --cluster jeanzay --dry-run --layout original`: one
job, whereas the default fast layout makes two legs with the same requeue block), then each case runs
it as an allocation would, with fake `srun`, `scontrol` and `module` first on PATH. The fake `srun`
stands in for the training: it saves a checkpoint of a given iteration (or nothing) under the
`--output-root` of the command it is given, and exits with a given code; it writes a marker file when
it starts, which the SIGTERM case waits on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lucie_nemo.cli import launch as launch_cli

JOB_ID = "4242"
FINAL_ITERATION = 753851  # pretrain: the original run's last iteration

FAKE_SRUN = """#!/bin/bash
# The batch script's first srun asks for the head node's address; every other srun is the training.
if [[ " $* " == *" hostname --ip-address "* ]]; then echo 127.0.0.1; exit 0; fi
args=("$@")
for i in "${!args[@]}"; do [ "${args[$i]}" = --output-root ] && root=${args[$((i + 1))]}; done
if [ -n "$FAKE_SAVE" ]; then
    mkdir -p "$root/pretrain/checkpoints"
    echo "$FAKE_SAVE" > "$root/pretrain/checkpoints/latest_checkpointed_iteration.txt"
fi
echo "$*" > "$FAKE_DIR/srun_started"
[ -n "$FAKE_HANG" ] && exec sleep 60
exit "${FAKE_EXIT:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$FAKE_DIR/scontrol_calls"
[ "$1 $2" = "show hostnames" ] && echo node001
exit 0
"""


@dataclass(frozen=True)
class RenderedJob:
    script: Path
    fake_dir: Path
    venv: Path
    checkpoints: Path
    failures_file: Path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, megatron_runtime) -> RenderedJob:
    root = tmp_path_factory.mktemp("rendered")
    site = root / "clusters.toml"
    venv = root / "venv"
    site.write_text(
        f'[jeanzay]\naccount = "abc@h100"\nmodules = ["arch/h100"]\nvenv = "{venv}"\n'
        f'output_root = "{root / "runs"}"\njob_root = "{root / "jobs"}"\n'
    )
    app = typer.Typer()
    launch_cli.register(app)
    app.command("version")(lambda: None)  # a second command keeps `launch` a sub-command, as in `lucie`
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(root / "xdg"))
        result = CliRunner().invoke(app, ["launch", "pretrain", "--cluster", "jeanzay", "--site-config", str(site),
                                          "--dry-run", "--layout", "original"])
    assert result.exit_code == 0, result.output
    script = Path(result.stdout.strip().splitlines()[-1])
    text = script.read_text()
    assert f"lucie_final_iteration={FINAL_ITERATION}" in text and "lucie_max_retries=3" in text
    failures_file = Path(re.search(r"^lucie_failures_file=(\S+)$", text, re.M).group(1))

    fake_dir = root / "fakes"
    bin_dir = fake_dir / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("module", "#!/bin/bash\nexit 0\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV={venv}\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    return RenderedJob(script, fake_dir, venv, root / "runs" / "pretrain" / "checkpoints", failures_file)


class Allocation:
    """Runs of the rendered script for one test, from a phase with no checkpoint and no failed attempt."""

    def __init__(self, job: RenderedJob):
        self.job = job
        for path in (job.fake_dir / "scontrol_calls", job.fake_dir / "srun_started", job.failures_file,
                     job.checkpoints / "latest_checkpointed_iteration.txt"):
            path.unlink(missing_ok=True)

    def env(self, save: int | None, exit_code: int, hang: bool = False) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.job.fake_dir / 'bin'}:{os.environ['PATH']}",
            "FAKE_DIR": str(self.job.fake_dir),
            "FAKE_SAVE": "" if save is None else str(save),
            "FAKE_EXIT": str(exit_code),
            "FAKE_HANG": "1" if hang else "",
            "SLURM_JOB_ID": JOB_ID,
            "SLURM_JOB_NODELIST": "node001",
            "SLURM_NODEID": "0",
        }

    def run(self, save: int | None, exit_code: int = 0) -> subprocess.CompletedProcess:
        """One allocation whose training checkpoints iteration ``save`` (None: nothing), then exits."""
        return subprocess.run(["bash", str(self.job.script)], env=self.env(save, exit_code),
                              capture_output=True, text=True, timeout=60)

    def requeues(self) -> list[str]:
        calls = self.job.fake_dir / "scontrol_calls"
        return [line for line in calls.read_text().splitlines() if line.startswith("requeue")] if calls.exists() else []


@pytest.mark.parametrize("exit_code", [0, 1])  # a timed stop (Megatron-Bridge exits 0) and a crash after saving
def test_stopped_early_is_requeued_once(rendered, exit_code):
    job = Allocation(rendered)
    result = job.run(save=40, exit_code=exit_code)
    assert result.returncode == 3, result.stdout + result.stderr
    assert job.requeues() == [f"requeue {JOB_ID}"]
    assert f"lucie: stopped at iteration 40 of {FINAL_ITERATION} (exit code {exit_code}): requeueing" in result.stdout
    started = (rendered.fake_dir / "srun_started").read_text()
    assert f"--no-python {rendered.venv}/bin/lucie train pretrain" in started


def test_finished_phase_exits_0_without_requeue(rendered):
    job = Allocation(rendered)
    result = job.run(save=FINAL_ITERATION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job.requeues() == []
    assert f"lucie: phase finished (checkpoint of iteration {FINAL_ITERATION})" in result.stdout


def test_four_attempts_without_a_new_checkpoint_give_up(rendered):
    job = Allocation(rendered)
    assert job.run(save=40).returncode == 3  # progress: the retry count starts from here
    codes = []
    for attempt in range(1, 5):
        codes.append(job.run(save=None, exit_code=1).returncode)
        assert len(job.requeues()) == 1 + min(attempt, 3)
    assert codes == [3, 3, 3, 1]  # max_retries = 3: the fourth attempt in a row without progress fails the job
    assert rendered.failures_file.read_text().strip() == "4"


def test_sigterm_to_the_batch_script_is_not_requeued(rendered):
    job = Allocation(rendered)
    process = subprocess.Popen(["bash", str(rendered.script)], env=job.env(save=40, exit_code=0, hang=True),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    started = rendered.fake_dir / "srun_started"
    deadline = time.monotonic() + 60
    while not started.exists():  # the training step is running (and has saved iteration 40)
        assert process.poll() is None and time.monotonic() < deadline, "the fake training never started"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGTERM)  # scancel: SIGTERM to the batch shell and its steps
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "lucie: cancelled or out of time (SIGTERM) at iteration 40: not requeueing" in output
    assert job.requeues() == []
