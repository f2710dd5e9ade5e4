"""A checkpoint load either succeeds or stops the run with one error naming the checkpoint and the cause.

Megatron-Bridge 0.6 ends several failed loads with a bare ``sys.exit()`` (status 0, so ``lucie train``
looked successful): RNG state missing while ``load_rng`` is on, an unreadable rerun state,
``exit_on_missing_checkpoint``, a tracker file that holds no iteration. A damaged torch_dist checkpoint (no
``.metadata``, a short ``.distcp``) fails deep in torch.distributed.checkpoint instead. ``CheckedCheckpointManager``
is Bridge's own extension point (``checkpoint.custom_manager_class``) around its default manager: it checks the
checkpoint's files before the load and turns both kinds of failure into a ``CheckpointLoadError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from megatron.bridge.training import checkpointing
from megatron.bridge.training.utils.checkpoint_utils import checkpoint_exists, is_hf_checkpoint_dir

from lucie_nemo.errors import UserError

MANAGER = "lucie_nemo.checkpoint_load.CheckedCheckpointManager"


class CheckpointLoadError(UserError):
    """A checkpoint could not be loaded: the message names it and the cause."""


def use_checked_loads(cfg) -> None:
    """Load ``cfg``'s checkpoints through CheckedCheckpointManager (Bridge instantiates it by name)."""
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    register_allowed_target_prefix("lucie_nemo.")
    cfg.checkpoint.custom_manager_class = MANAGER


def checkpoint_to_load(checkpoint_cfg) -> str | None:
    """The folder Bridge loads: the resume folder when it holds a checkpoint, else the pretrained one."""
    if checkpoint_cfg.load is not None and checkpoint_exists(checkpoint_cfg.load):
        return checkpoint_cfg.load
    return checkpoint_cfg.pretrained_checkpoint


def require_initial_checkpoint(checkpoint_cfg, phase: str) -> None:
    """A phase that starts from another's checkpoint (``pretrained_checkpoint``) and has none of its own yet
    needs that checkpoint: one error naming it, rather than Bridge's assertion deep in its config, or, for a
    folder that is no checkpoint Bridge can load, Bridge silently starting from random weights."""
    initial = checkpoint_cfg.pretrained_checkpoint
    if initial is None or checkpoint_to_load(checkpoint_cfg) != initial:
        return
    if not Path(initial).exists():
        raise UserError(f"phase {phase} starts from the checkpoint {initial}, which does not exist: train the phase "
                        "before it first (its last checkpoint goes there), or set checkpoint.pretrained_checkpoint=PATH")
    if checkpoint_exists(initial) or is_hf_checkpoint_dir(initial):
        return
    inside = Path(initial) / "checkpoints"
    hint = f" (a run folder? {inside} is a checkpoint)" if checkpoint_exists(str(inside)) else ""
    raise UserError(f"phase {phase} starts from {initial}, which is not a checkpoint{hint}: Megatron-Bridge would "
                    "ignore it and start from random weights. Give a checkpoints folder (with "
                    "latest_checkpointed_iteration.txt), one of its iter_NNNNNNN folders, or a Hugging Face folder")


def resumes_distributed_optimizer_state(checkpoint_cfg) -> bool:
    """Whether the run resumes from a checkpoint whose optimizer state megatron-core's DistributedOptimizer
    wrote (its run_config.yaml says so): a CPU run loads it with the same optimizer (`lucie import`'s
    checkpoints, a multi-rank run's)."""
    if checkpoint_cfg.load is None or not checkpoint_exists(checkpoint_cfg.load):
        return False
    from converters.megatron_reader import locate, read_yaml

    try:
        run_config = read_yaml(locate(checkpoint_cfg.load).weights_dir / "run_config.yaml")
    except (UserError, OSError):
        return False  # the load itself then says what is wrong
    return bool(run_config.get("optimizer", {}).get("use_distributed_optimizer", False))


def check_files(path: str) -> None:
    """Refuse a torch_dist checkpoint whose tracker, iteration folder, ``.metadata`` or ``.distcp`` files are
    missing, short or unreadable (the exporter's own checks); Hugging Face folders are Bridge's to read."""
    if is_hf_checkpoint_dir(path):
        return
    from converters.megatron_reader import locate, read_metadata

    try:
        read_metadata(locate(path).weights_dir)
    except UserError as error:
        raise CheckpointLoadError(f"cannot load checkpoint {path}: {error}") from None
    except Exception as error:  # an unreadable .metadata: torch raises pickling and I/O errors of many types
        raise CheckpointLoadError(f"cannot load checkpoint {path}: {_first_line(error)}") from None


@contextlib.contextmanager
def _bridge_messages() -> Iterator[list[str]]:
    """Record what Bridge's checkpointing prints: it names the cause just before a bare sys.exit()."""
    said: list[str] = []
    original = checkpointing.print_rank_0

    def print_rank_0(message, *args, **kwargs):
        said.append(str(message).strip())
        return original(message, *args, **kwargs)

    checkpointing.print_rank_0 = print_rank_0
    try:
        yield said
    finally:
        checkpointing.print_rank_0 = original


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


class CheckedCheckpointManager(checkpointing.DefaultCheckpointManager):
    """Bridge's default manager; a load that fails in any way raises CheckpointLoadError."""

    def load(self, ctx):
        path = checkpoint_to_load(ctx.state.cfg.checkpoint)
        if path is not None:
            check_files(path)
        with _bridge_messages() as said:
            try:
                return super().load(ctx)
            except SystemExit:
                cause = said[-1] if said else "Megatron-Bridge stopped the run (sys.exit) while loading it"
                raise CheckpointLoadError(f"cannot load checkpoint {path}: {cause}") from None
            except UserError:
                raise
            except Exception as error:
                raise CheckpointLoadError(f"cannot load checkpoint {path}: {_first_line(error)}") from None
