"""A real single-node Slurm on localhost for the tests (Debian's slurm-wlm and munge).

Its own munge key and socket, slurm.conf, state, spool and logs live in one folder; the daemons run in the
foreground as children of the test process and are stopped by PID (never a system-wide stop). Clients find
it through ``SLURM_CONF`` (``LocalSlurm.env``). When slurmctld is missing it is installed with apt-get, where
the machine allows it (root and apt-get, as CI); otherwise ``unavailable_reason`` says why the tests skip.

Settings chosen for tests: 16 CPUs on the node whatever the machine has (``config_overrides``), so that
several jobs run side by side; ``cred_expire=5``: Slurm holds a requeued job that long before it may start
again (120 s by default, which clusters keep); a 1 s scheduling interval.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")

SLURM_CONF = """\
ClusterName=lucietest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
KillWait=10
SlurmdParameters=config_overrides
NodeName=localhost CPUs=16 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def unavailable_reason() -> str | None:
    """None when Slurm is installed or can be (root with apt-get, then installed now); else why not."""
    if all(shutil.which(daemon) for daemon in DAEMONS):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"needs {' and '.join(PACKAGES)} (or root with apt-get to install them)"
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True)
    if result.returncode != 0 or not all(shutil.which(daemon) for daemon in DAEMONS):
        return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalSlurm:
    """The running cluster: its folder, the environment its clients need, its daemons."""

    root: Path
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def command(self, *args: str) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, Dependency, ...)."""
        fields = {}
        for item in self.command("scontrol", "show", "job", "-o", job_id).split():
            key, _, value = item.partition("=")
            fields[key] = value
        return fields

    def wait_until_finished(self, job_id: str, timeout: float) -> dict[str, str]:
        """The job's fields once it has left Slurm's queue for good (requeues go back to PENDING)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if fields["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return fields
            time.sleep(2)
        raise TimeoutError(f"Slurm job {job_id} still {self.job(job_id)['JobState']} after {timeout:.0f} s "
                           f"(logs: {self.root / 'log'})")

    def start(self) -> None:
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.root / "munge").chmod(0o755)
        (self.root / "slurm.conf").write_text(
            SLURM_CONF.format(root=self.root, ctld_port=_free_port(), slurmd_port=_free_port()))
        conf = str(self.root / "slurm.conf")
        munge = self.root / "munge"
        self._daemon("munged", "-F", "-f", f"--socket={munge}/munge.socket", f"--key-file={key}",
                     f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/seed",
                     f"--log-file={self.root}/log/munged.log")
        self._wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket")
        self._daemon("slurmctld", "-D", "-f", conf)
        self._daemon("slurmd", "-D", "-f", conf, "-N", "localhost")
        self._wait_for(lambda: "idle" in self.command("sinfo", "-h", "-o", "%T"), "the node to be idle")

    def stop(self) -> None:
        """Cancel what is still queued or running (a failed test leaves no training behind), then stop the
        daemons this object started (by PID), the last started first."""
        if self.daemons and self.daemons[-1].poll() is None:
            subprocess.run(["scancel", "--partition=debug"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h"], env=self.env, capture_output=True, text=True).stdout.strip():
                time.sleep(1)
        for process in reversed(self.daemons):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _daemon(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.daemons.append(subprocess.Popen([name, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait_for(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited ({process.returncode}): see {self.root / 'log'}")
            try:
                if ready():
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}: see {self.root / 'log'}")
