"""Read tensors in order in a background thread, a bounded number of bytes ahead of the one consuming them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)


class ReadAhead(Generic[Key]):
    """``read(key)`` of each key in turn, started as soon as the tensors read but not yet released fit in
    ``budget`` bytes (one tensor is always allowed, however large): the reading overlaps whatever the consumer
    does with the earlier tensors (re-packing, writing), and memory stays bounded.

    Iterate to get ``(key, tensor)`` pairs; a tensor counts against the budget until the next one is asked for
    (drop it before). An error in the reader is raised in the consumer. ``close()`` stops the reader.
    """

    def __init__(self, read: Callable[[Key], torch.Tensor], keys: Sequence[Key], sizes: Sequence[int], budget: int):
        self._read, self._keys, self._sizes, self._budget = read, list(keys), list(sizes), budget
        self._ready: queue.Queue = queue.Queue()
        self._room = threading.Condition()
        self._in_flight = 0  # bytes read (or being read) and not released
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-read", daemon=True)
        self._thread.start()

    def _fits(self, size: int) -> bool:
        return self._stopped or self._in_flight == 0 or self._in_flight + size <= self._budget

    def _run(self) -> None:
        try:
            for key, size in zip(self._keys, self._sizes):
                with self._room:
                    self._room.wait_for(lambda: self._fits(size))
                    if self._stopped:
                        return
                    self._in_flight += size
                self._ready.put((key, self._read(key), size))
        except BaseException as error:  # handed to the consumer, which raises it
            self._ready.put(error)

    def __iter__(self) -> Iterator[tuple[Key, torch.Tensor]]:
        held = 0
        for _ in self._keys:
            self._release(held)
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            key, tensor, held = item
            yield key, tensor
        self._release(held)

    def _release(self, size: int) -> None:
        with self._room:
            self._in_flight -= size
            self._room.notify()

    def close(self) -> None:
        with self._room:
            self._stopped = True
            self._room.notify()
        self._thread.join()
