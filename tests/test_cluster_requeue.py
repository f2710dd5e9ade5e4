"""Walltime -> timed stop, and the requeue / retry-limit logic, run in bash with a fake scontrol in a minimal
script; tests/test_requeue_rendered.py runs the script that `lucie launch --dry-run` renders."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster.requeue import RequeuePolicy, exit_duration_minutes
from cluster.site_config import parse_walltime
from lucie_nemo.errors import UserError


@pytest.mark.parametrize(
    ("walltime", "minutes"),
    [("20:00:00", 1200), ("1-12:00:00", 2160), ("00:30:59", 30), ("100:00:00", 6000), ("2-00:00:00", 2880)],
)
def test_walltime_minutes(walltime, minutes):
    assert parse_walltime(walltime) == minutes


@pytest.mark.parametrize("walltime", ["20h", "20:00", "1200", "", "20:61:00", "1-", "-20:00:00"])
def test_bad_walltime_is_a_user_error(walltime):
    with pytest.raises(UserError, match="HH:MM:SS or D-HH:MM:SS"):
        parse_walltime(walltime)


def test_exit_duration_is_walltime_less_margin():
    assert exit_duration_minutes(parse_walltime("20:00:00"), 20) == 1180  # Jean Zay's 20 h limit
    assert exit_duration_minutes(parse_walltime("04:00:00"), 15) == 225
    with pytest.raises(UserError, match="stop margin"):
        exit_duration_minutes(20, 20)


class FakeJob:
    """One allocation of a requeued phase: the policy's set-up, a 'training' step, then exit."""

    def __init__(self, tmp_path: Path, final_iteration: int = 100, max_retries: int = 2):
        self.checkpoints = tmp_path / "runs" / "pretrain" / "checkpoints"
        self.checkpoints.mkdir(parents=True)
        self.calls = tmp_path / "scontrol_calls"
        self.failures = tmp_path / "job" / "lucie_failed_attempts"
        self.failures.parent.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f'#!/bin/bash\necho "$*" >> {self.calls}\n')
        scontrol.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
        self.policy = RequeuePolicy(str(self.checkpoints), final_iteration, max_retries, str(self.failures))
        self.script = tmp_path / "job.sh"

    def _write(self, training: str) -> None:
        # The same order as nemo-run's sbatch template: set-up lines, the srun step, exitcode, exit.
        self.script.write_text(f"set +e\n{self.policy.shell()}\n{training}\nexitcode=$?\nexit $exitcode\n")

    def attempt(self, reaches: int | None, exit_code: int = 0) -> subprocess.CompletedProcess:
        """Run one allocation whose training checkpoints ``reaches`` (None: nothing) then exits."""
        save = f"echo {reaches} > {self.checkpoints}/latest_checkpointed_iteration.txt; " if reaches is not None else ""
        self._write(f"( {save}exit {exit_code} )")
        return subprocess.run(["bash", str(self.script)], env=self.env, capture_output=True, text=True, timeout=30)

    def requeues(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


def test_stopped_early_is_requeued_and_unfinished_phase_never_exits_0(tmp_path):
    job = FakeJob(tmp_path)
    result = job.attempt(reaches=40)  # timed stop: Megatron-Bridge saved and exited 0
    assert result.returncode == 3
    assert job.calls.read_text() == "requeue 4242\n"
    assert "stopped at iteration 40 of 100" in result.stdout
    assert job.failures.read_text().strip() == "0"


def test_finished_phase_exits_0_and_is_not_requeued(tmp_path):
    job = FakeJob(tmp_path)
    job.attempt(reaches=40)
    result = job.attempt(reaches=100)
    assert result.returncode == 0
    assert job.requeues() == 1  # only the first, unfinished allocation
    assert not job.failures.exists()
    # A requeued allocation that finds the phase already done stops at once, successfully.
    assert job.attempt(reaches=None).returncode == 0
    assert job.requeues() == 1


def test_retry_limit_stops_a_crash_loop(tmp_path):
    job = FakeJob(tmp_path, max_retries=2)
    job.attempt(reaches=40)
    results = [job.attempt(reaches=None, exit_code=1) for _ in range(3)]
    assert [r.returncode for r in results] == [3, 3, 1]  # two retries without a new checkpoint, then it fails
    assert job.requeues() == 1 + 2
    assert "giving up: 3 attempts in a row without a new checkpoint" in results[-1].stdout


def test_progress_resets_the_retry_count(tmp_path):
    job = FakeJob(tmp_path, max_retries=2)
    job.attempt(reaches=None, exit_code=1)
    job.attempt(reaches=None, exit_code=1)
    assert job.failures.read_text().strip() == "2"
    assert job.attempt(reaches=60, exit_code=1).returncode == 3  # a crash after new checkpoints is retried
    assert job.failures.read_text().strip() == "0"
    assert [job.attempt(reaches=None, exit_code=1).returncode for _ in range(3)] == [3, 3, 1]


def test_cancelled_job_is_not_requeued(tmp_path):
    job = FakeJob(tmp_path)
    started = tmp_path / "started"
    job._write(f"touch {started}; sleep 30 & wait $!")  # srun runs in the foreground; scancel kills it too
    process = subprocess.Popen(["bash", str(job.script)], env=job.env, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while not started.exists():  # the trap is set before the step starts
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGTERM)  # scancel: SIGTERM to the batch shell and its steps
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "cancelled or out of time" in output
    assert job.requeues() == 0


def test_failed_checkpoint_load_counts_as_a_failed_attempt(tmp_path):
    """`lucie train` exits 2 with an error line when its checkpoint cannot be loaded; nothing new is saved."""
    job = FakeJob(tmp_path, max_retries=1)
    job.attempt(reaches=40)
    results = [job.attempt(reaches=None, exit_code=2) for _ in range(2)]
    assert [r.returncode for r in results] == [3, 1]
    assert job.failures.read_text().strip() == "2"
    assert "giving up: 2 attempts in a row without a new checkpoint (last exit code 2)" in results[-1].stdout
