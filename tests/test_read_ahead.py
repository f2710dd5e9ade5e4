"""converters.read_ahead: in order, within its byte budget, errors handed to the consumer."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from converters.read_ahead import ReadAhead


def test_reads_in_order_within_the_budget_and_overlaps_the_consumer():
    sizes = [40, 10, 30, 30, 100, 10]  # 100 > budget: read alone
    lock, alive, most = threading.Lock(), set(), [0]

    def read(key: int) -> torch.Tensor:
        with lock:
            alive.add(key)
            most[0] = max(most[0], sum(sizes[k] for k in alive))
        return torch.full((sizes[key],), key, dtype=torch.uint8)

    reader = ReadAhead(read, range(len(sizes)), sizes, budget=80)
    got = []
    for key, tensor in reader:
        time.sleep(0.05)  # the consumer is slow: the reader runs ahead as far as the budget lets it
        assert tensor.tolist() == [key] * sizes[key]
        got.append(key)
        with lock:
            alive.discard(key)
        del tensor
    reader.close()
    assert got == list(range(len(sizes)))
    assert most[0] == 100  # the large one alone; before it, 40 + 10 + 30 = 80 at most


def test_an_error_in_the_reader_is_raised_in_the_consumer():
    def read(key: int) -> torch.Tensor:
        if key == 2:
            raise OSError("short read")
        return torch.zeros(1)

    reader = ReadAhead(read, range(4), [1] * 4, budget=10)
    with pytest.raises(OSError, match="short read"):
        list(reader)
    reader.close()
