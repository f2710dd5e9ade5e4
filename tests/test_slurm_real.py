"""Slurm for real: `lucie launch` and `lucie data build --cluster`, typed as a user types them, against a
single-node Slurm started on localhost (tests/local_slurm.py), on the `generic` profile with CPU nodes.

Every scenario is submitted at the start of the module (each with its own output root), so that their jobs
run side by side in Slurm; each test then waits for its own jobs and reads what they left: Slurm's job
records, the allocation logs, the checkpoints.

- chain: `lucie launch all --tiny`: three jobs, each `afterok` on the one before, each phase from the
  previous phase's last checkpoint;
- sigterm: `scancel --signal=TERM` to the steps mid-run, far from any periodic save;
- timed: a 5-minute walltime whose timed stop (after 1 minute of training) comes first;
- crash: a phase that fails at start-up on every attempt (its initial checkpoint is truncated: its tracker names
  an iteration whose folder is missing; a missing one is refused at submission);
- data: `lucie data build pretrain --cluster` of two prefixes of the miniature public dataset (fake Hub).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_slurm import LocalSlurm, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"real Slurm tests: {REASON}")

LUCIE = str(Path(sys.prefix) / "bin" / "lucie")
TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "lucie" / "tokenizer"
CHAIN_ITERATIONS = 3
SIGTERM_ITERATIONS = 16
SIGNAL_AT = 12  # after the tiny rampup's saves (one per batch-size change, iterations 2-9)
TIMED_ITERATIONS = 60  # more than a minute of training at about 1.3 s per iteration
NO_PERIODIC_SAVE = "checkpoint.save_interval=1000"
DATA_PREFIXES = ("Claire--en--MediaSum", "TheStack--python")
FINISHED = 15 * 60  # seconds a scenario may take, all of them sharing the machine's two cores

SITE = """\
[{name}]
profile = "generic"
gpus_per_node = 0
venv = "{venv}"
output_root = "{root}/{name}"
walltime = "{walltime}"
stop_margin_minutes = {margin}
sigterm_seconds = 60
max_retries = {retries}
"""


@dataclass
class Scenario:
    """One `lucie` command submitted to Slurm: its output root and the jobs it printed (name -> id, log)."""

    name: str
    root: Path
    process: subprocess.Popen
    jobs: dict[str, tuple[str, str]] | None = None
    dependencies: dict[str, str] | None = None  # as Slurm showed them right after submission

    def submitted(self) -> dict[str, tuple[str, str]]:
        if self.jobs is None:
            out, err = self.process.communicate(timeout=600)
            assert self.process.returncode == 0, f"{self.name}: {err[-3000:]}"
            self.jobs = {}
            for line in out.splitlines():
                match = re.match(r"([\w-]+): Slurm job (\d+)(?:; follow it with: tail -F (\S+))?", line)
                if match:
                    self.jobs[match[1]] = (match[2], match[3] or "")
        return self.jobs

    def job_id(self, name: str) -> str:
        return self.submitted()[name][0]

    def allocation_log(self, name: str, restart: int) -> str:
        log = self.submitted()[name][1]
        return Path(re.sub(r"_0\.out$", f"_{restart}.out", log)).read_text()

    def checkpoint_iteration(self, phase: str) -> int:
        return int((self.root / phase / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def dataset_hub_for_jobs():
    from fake_hub import DatasetHub, miniature_lucie_branches, miniature_lucie_dataset
    from lucie_nemo.data.sources import DATASET

    with DatasetHub() as hub:
        hub.add_dataset(DATASET, miniature_lucie_dataset(), miniature_lucie_branches())
        yield hub


@pytest.fixture(scope="module")
def scenarios(slurm, tmp_path_factory, dataset_hub_for_jobs) -> dict[str, Scenario]:
    """Submit every scenario at once (each `lucie` command in its own process, as typed in a shell)."""
    root = tmp_path_factory.mktemp("runs")
    config = root / "clusters.toml"
    tables = dict(chain=("00:30:00", 5, 3), sigterm=("00:30:00", 5, 3), timed=("00:05:00", 4, 3),
                  crash=("00:30:00", 5, 1), data=("00:30:00", 5, 3))
    config.write_text("\n".join(SITE.format(name=name, venv=sys.prefix, root=root, walltime=walltime, margin=margin,
                                            retries=retries)
                                for name, (walltime, margin, retries) in tables.items()))
    env = slurm.env | {"XDG_CONFIG_HOME": str(root / "xdg"), "LUCIE_CACHE": str(root / "cache")}
    site = ["--site-config", str(config)]
    truncated = root / "truncated" / "checkpoints"
    truncated.mkdir(parents=True)
    (truncated / "latest_checkpointed_iteration.txt").write_text("5")
    commands = {
        "chain": ["launch", "all", "--tiny", "--cluster", "chain", *site, f"train.train_iters={CHAIN_ITERATIONS}"],
        "sigterm": ["launch", "pretrain", "--tiny", "--cluster", "sigterm", *site,
                    f"train.train_iters={SIGTERM_ITERATIONS}", NO_PERIODIC_SAVE],
        "timed": ["launch", "pretrain", "--tiny", "--cluster", "timed", *site,
                  f"train.train_iters={TIMED_ITERATIONS}", NO_PERIODIC_SAVE],
        "crash": ["launch", "extension", "--tiny", "--cluster", "crash", *site,
                  f"checkpoint.pretrained_checkpoint={truncated}"],
        "data": ["data", "build", "pretrain", "--data-root", str(root / "data" / "datasets"), "--tokenizer",
                 str(TOKENIZER), "--endpoint", dataset_hub_for_jobs.url, "--workers", "1", "--cluster", "data",
                 *site, "--task-gb", "0.000001", *(f"--only={prefix}" for prefix in DATA_PREFIXES)],
    }
    started = {name: Scenario(name, root / name, subprocess.Popen([LUCIE, *args], env=env, stdout=subprocess.PIPE,
                                                                   stderr=subprocess.PIPE, text=True))
               for name, args in commands.items()}
    for scenario in started.values():
        scenario.submitted()
    # Right after submission, while pretrain runs: the later phases wait on the one before.
    chain = started["chain"]
    started["chain"].dependencies = {phase: slurm.job(chain.job_id(phase))["Dependency"]
                                     for phase in ("extension", "anneal")}
    watcher = threading.Thread(target=_signal_mid_run, args=(slurm, started["sigterm"]), daemon=True)
    watcher.start()
    yield started
    watcher.join(timeout=1)


def _signal_mid_run(slurm: LocalSlurm, scenario: Scenario) -> None:
    """`scancel --signal=TERM` to the pretrain job's steps once it logs iteration SIGNAL_AT."""
    job_id = scenario.job_id("pretrain")
    deadline = time.monotonic() + FINISHED
    while time.monotonic() < deadline:
        try:
            if re.search(rf"iteration +{SIGNAL_AT}/", scenario.allocation_log("pretrain", 0)):
                slurm.command("scancel", "--signal=TERM", job_id)
                return
        except FileNotFoundError:
            pass
        time.sleep(0.5)


def finished(slurm: LocalSlurm, scenario: Scenario, name: str) -> dict[str, str]:
    return slurm.wait_until_finished(scenario.job_id(name), FINISHED)


def last_iteration_logged(log: str) -> int:
    return int(re.findall(r"iteration +(\d+)/", log)[-1])


def loaded_iteration(log: str) -> int:
    return int(re.search(r"successfully loaded checkpoint from .* at iteration (\d+)", log)[1])


def test_three_phases_chain_afterok_each_from_the_previous_checkpoint(slurm, scenarios):
    chain = scenarios["chain"]
    assert list(chain.submitted()) == ["pretrain", "extension", "anneal"]
    assert chain.dependencies == {"extension": f"afterok:{chain.job_id('pretrain')}(unfulfilled)",
                                  "anneal": f"afterok:{chain.job_id('extension')}(unfulfilled)"}
    previous = None
    for phase in ("pretrain", "extension", "anneal"):
        job = finished(slurm, chain, phase)
        assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), job
        assert chain.checkpoint_iteration(phase) == CHAIN_ITERATIONS
        assert f"lucie: phase finished (checkpoint of iteration {CHAIN_ITERATIONS})" in _batch_log(chain, phase)
        log = chain.allocation_log(phase, 0)
        assert last_iteration_logged(log) == CHAIN_ITERATIONS
        if previous:  # its first weights: the previous phase's last checkpoint
            assert f"successfully loaded checkpoint from {chain.root / previous / 'checkpoints'}" in log, log[-3000:]
            assert job["StartTime"] >= slurm.job(chain.job_id(previous))["EndTime"]
        previous = phase


def test_sigterm_to_the_steps_saves_the_current_iteration_then_requeues_and_finishes(slurm, scenarios):
    run = scenarios["sigterm"]
    job = finished(slurm, run, "pretrain")
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), job
    first = run.allocation_log("pretrain", 0)
    assert "exiting program after receiving SIGTERM" in first
    stopped_at = last_iteration_logged(first)
    assert SIGNAL_AT <= stopped_at < SIGTERM_ITERATIONS
    assert f"successfully saved checkpoint from iteration {stopped_at:>7d}" in first  # the signal's iteration
    assert "DataLoader worker" not in first and "death signal" not in first
    second = run.allocation_log("pretrain", 1)
    assert loaded_iteration(second) == stopped_at
    assert re.search(rf"iteration +{stopped_at + 1}/", second)
    assert run.checkpoint_iteration("pretrain") == SIGTERM_ITERATIONS


def test_the_timed_stop_saves_before_the_walltime_then_requeues_and_finishes(slurm, scenarios):
    run = scenarios["timed"]
    job = finished(slurm, run, "pretrain")
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    restarts = int(job["Restarts"])
    assert restarts >= 1
    first = run.allocation_log("pretrain", 0)
    assert re.search(r"exiting program after [0-9.]+ minutes", first)  # the timed stop, not the signal
    stopped_at = last_iteration_logged(first)
    assert f"successfully saved checkpoint from iteration {stopped_at:>7d}" in first
    assert stopped_at > 10  # beyond the rampup's saves: the stop's own checkpoint
    assert loaded_iteration(run.allocation_log("pretrain", 1)) == stopped_at
    assert run.checkpoint_iteration("pretrain") == TIMED_ITERATIONS
    assert f"lucie: phase finished (checkpoint of iteration {TIMED_ITERATIONS})" in \
        run.allocation_log("pretrain", restarts) + _batch_log(run, "pretrain")


def test_a_crash_loop_is_retried_max_retries_times_then_the_job_fails(slurm, scenarios):
    run = scenarios["crash"]
    job = finished(slurm, run, "extension")
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "1:0", "1"), job
    batch = _batch_log(run, "extension")
    assert "lucie: stopped at iteration 0 of " in batch  # the first failure: requeued
    assert "lucie: giving up: 2 attempts in a row without a new checkpoint" in batch
    truncated = run.root.parent / "truncated" / "checkpoints"
    for restart in (0, 1):
        log = run.allocation_log("extension", restart)
        assert f"error: cannot load checkpoint {truncated}: " in log and "names iter_0000005, which is missing" in log


def test_data_build_runs_as_jobs_then_the_blend_job_writes_and_checks_the_blend(slurm, scenarios):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    run = scenarios["data"]
    jobs = run.submitted()
    assert list(jobs) == ["data-001", "data-002", "data-blend"]  # one job per prefix at this --task-gb
    for name in jobs:
        job = finished(slurm, run, name)
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
    data_root = run.root.parent / "data" / "datasets"
    blend = (data_root / "blend-pretrain.txt").read_text().split()
    for prefix in DATA_PREFIXES:
        path = next(entry for entry in blend if prefix in entry)
        dataset = IndexedDataset(str(data_root / path))
        assert len(dataset) > 0 and all(len(dataset[i]) > 0 for i in range(len(dataset)))


def _batch_log(run: Scenario, name: str) -> str:
    """The batch script's own output (the requeue decisions), all allocations appended."""
    log = Path(run.submitted()[name][1])
    return "\n".join(path.read_text() for path in log.parent.glob("sbatch_*.out"))
