"""A SIGTERM to a Slurm step (the walltime's --signal, `scancel --signal=TERM`, a preemption) reaches every
process of the step; the trainer saves on it (``train.exit_signal_handler``), so every helper process the save
needs must survive it. cluster/profiles.py keeps torchrun out of it; Megatron-Bridge covers the DataLoader
workers (``train.exit_signal_handler_for_dataloader``). This module covers the last one: the checkpoint writer's
results queue, a ``multiprocessing`` manager process that megatron-core spawns at the first save and keeps.
Spawned after Megatron-Bridge installs its handler, it would start with SIGTERM at its default (die), and the
save on the signal would then fail with a broken pipe."""

from __future__ import annotations

import signal


def start_checkpoint_writer_queue_ignoring_sigterm() -> None:
    """Start megatron-core's checkpoint-writer results queue now, with SIGTERM ignored (inherited by its
    manager process): the queue the first save would otherwise create."""
    from megatron.core.dist_checkpointing.strategies.filesystem_async import get_write_results_queue

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        get_write_results_queue()
    finally:
        signal.signal(signal.SIGTERM, previous)
