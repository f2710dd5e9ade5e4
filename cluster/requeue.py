"""Surviving time limits: stop before the limit, then requeue the same Slurm job until the phase is done.

Why requeue (``scontrol requeue $SLURM_JOB_ID``) rather than an ``afterany`` chain of new jobs:
the job keeps its id, so the next phase's ``afterok:<id>`` dependency waits for the whole phase
(every allocation of it) and only starts once the job finally exits 0; one sbatch per phase,
one log folder, nothing submitted speculatively.

Megatron-Bridge exits 0 both when the phase is finished and when it stopped early (at
``train.exit_duration_in_mins`` or on SIGTERM, after saving), so the checkpoint decides: the
batch script reads ``latest_checkpointed_iteration.txt`` when it exits and

- iteration >= the phase's last iteration: exit 0 (the next phase may start), no requeue;
- the batch shell itself got SIGTERM (``scancel``, or the time limit reached before the timed
  stop): exit 1, no requeue, so a cancelled job stays cancelled (the signal sent before the
  limit, ``--signal=TERM@N``, goes to the job steps only, where Megatron-Bridge saves and stops);
- attempts that end without a new checkpoint are counted (a file in the job folder, kept across
  requeues); after ``max_retries`` of them in a row: exit 1, no requeue, which cancels the later
  phases (``--kill-on-invalid-dep=yes``). A checkpoint saved since the attempt started resets
  the count, so a crash after hours of progress is retried, a crash loop is not;
- otherwise: requeue, and exit 3: an unfinished phase never looks successful.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from lucie_nemo.errors import UserError

PROGRESS_FILE = "latest_checkpointed_iteration.txt"  # written by Megatron after each complete save


def exit_duration_minutes(walltime_minutes: int, stop_margin_minutes: int) -> int:
    """``train.exit_duration_in_mins``: the walltime less the margin for the final save and start-up."""
    duration = walltime_minutes - stop_margin_minutes
    if duration < 1:
        raise UserError(
            f"walltime of {walltime_minutes} min leaves no training time after the {stop_margin_minutes} min "
            "stop margin: raise walltime or lower stop_margin_minutes"
        )
    return duration


@dataclass(frozen=True)
class RequeuePolicy:
    """What the batch script needs to decide, when it exits, whether to requeue itself."""

    checkpoints: str  # the phase's checkpoint folder
    final_iteration: int  # the phase is done once a checkpoint of this iteration exists
    max_retries: int  # attempts in a row without a new checkpoint before giving up
    failures_file: str  # where that count survives requeues (the job's folder)

    def shell(self) -> str:
        """Bash for the batch script's set-up: remember the starting iteration, decide on exit."""
        q = shlex.quote
        return f"""\
# lucie: requeue this job until the phase's last iteration is checkpointed (see cluster/requeue.py)
lucie_checkpoints={q(self.checkpoints)}
lucie_final_iteration={self.final_iteration}
lucie_max_retries={self.max_retries}
lucie_failures_file={q(self.failures_file)}
lucie_iteration() {{
    local it
    it=$(cat "$lucie_checkpoints/{PROGRESS_FILE}" 2>/dev/null)
    [[ $it =~ ^[0-9]+$ ]] && echo "$it" || echo 0
}}
lucie_start_iteration=$(lucie_iteration)
lucie_cancelled=0
trap 'lucie_cancelled=1' TERM
lucie_on_exit() {{
    local status=$? iteration failures
    set +e
    iteration=$(lucie_iteration)
    if [ "$iteration" -ge "$lucie_final_iteration" ]; then
        echo "lucie: phase finished (checkpoint of iteration $iteration)"
        rm -f "$lucie_failures_file"
        exit 0
    fi
    if [ "$lucie_cancelled" = 1 ]; then
        echo "lucie: cancelled or out of time (SIGTERM) at iteration $iteration: not requeueing"
        exit 1
    fi
    if [ "$iteration" -gt "$lucie_start_iteration" ]; then
        failures=0
    else
        failures=$(( $(cat "$lucie_failures_file" 2>/dev/null || echo 0) + 1 ))
    fi
    echo "$failures" > "$lucie_failures_file"
    if [ "$failures" -gt "$lucie_max_retries" ]; then
        echo "lucie: giving up: $failures attempts in a row without a new checkpoint (last exit code $status)"
        exit 1
    fi
    echo "lucie: stopped at iteration $iteration of $lucie_final_iteration (exit code $status): requeueing"
    scontrol requeue "$SLURM_JOB_ID" || echo "lucie: requeue failed: resubmit this script to resume"
    exit 3
}}
trap lucie_on_exit EXIT"""
