"""`lucie import ARGS...` that kills its process group with SIGKILL at one moment (the subprocess of
tests/test_import_kill.py, started in a session of its own):

    python import_killed.py MOMENT N ARGS...

MOMENT: ``produce`` (while the N-th tensor file is open, before its tensor is produced), ``record`` (the N-th tensor
file written and synced, before the journal records it), ``metadata`` (every tensor file written, before torch
writes ``.metadata``) or ``rename`` (the work folder complete, before it becomes the output).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _kill_on(owner, name: str, when) -> None:
    """Replace ``owner.name`` by a function that kills the process when ``when(*args)`` holds, else calls it."""
    original = getattr(owner, name)

    def replaced(*args, **kwargs):
        if when(*args, **kwargs):  # the whole group: Megatron's worker processes with it
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, replaced)


def main(moment: str, n: int, args: list[str]) -> None:
    from lucie_nemo import runtime

    runtime.prepare()
    from torch.distributed.checkpoint import FileSystemWriter

    import converters.torch_dist_stream as stream

    calls = [0]

    def nth(*_, **__) -> bool:
        calls[0] += 1
        return calls[0] == n

    if moment == "produce":
        _kill_on(stream._StreamingSavePlanner, "resolve_data", nth)
    elif moment == "record":
        _kill_on(stream._Journal, "record", nth)
    elif moment == "metadata":
        _kill_on(FileSystemWriter, "finish", lambda *_, **__: True)
    elif moment == "rename":
        _kill_on(Path, "rename", lambda self, target: Path(target).name == Path(args[1]).name)
    else:
        raise SystemExit(f"unknown moment {moment}")
    from lucie_nemo.cli import main as lucie

    sys.argv = ["lucie", "import", *args]
    lucie()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
