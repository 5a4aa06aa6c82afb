"""PyTorch's intra-op thread count, which is process-wide, set or kept around a block.

Ultralytics' ``select_device("cpu")`` (called by every trainer and stand-alone validator) sets
``torch.set_num_threads(min(8, cpu_count - 1))`` and never restores it: on a 2-core machine every later
step of the process, training included, would run on one core (measured: 3 finetune epochs of the demo
model took 6.0 s instead of 4.2 s). Our trainers and evaluation keep the count the process had.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch intra-op threads set to ``n`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_threads():
    """The current thread count, restored when the block ends (whatever the block set it to)."""
    return torch_threads(torch.get_num_threads())
