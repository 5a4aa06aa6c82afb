"""Pruning schedules: one shot to the target, or several rounds of pruning and finetuning.

- **oneshot**: prune to the target speed-up, then finetune all the epochs.
- **iterative**: ``rounds`` rounds; round ``i`` prunes to ``target ** (i / rounds)`` (in GFLOPs, counted
  from the model the run started with, so every round cuts the same factor) and finetunes its share of
  the epochs. The total number of finetune epochs is the same as one-shot's.

These helpers are pure; the pipeline runs the rounds and records them.

Example:
    >>> round_targets(2.0, 2)
    [1.4142, 2.0]
    >>> round_epochs(10, 3)
    [3, 3, 4]
"""

from __future__ import annotations


def round_targets(speed_up: float, rounds: int) -> list[float]:
    """Speed-up (baseline GFLOPs / pruned GFLOPs) to reach at the end of each round; the last is ``speed_up``.

    Equal factors per round (``speed_up ** (1 / rounds)``): each round removes the same share of what is left.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    return [round(speed_up ** (i / rounds), 4) for i in range(1, rounds)] + [speed_up]


def round_epochs(epochs: int, rounds: int) -> list[int]:
    """Finetune epochs of each round: ``epochs // rounds`` each, the rest to the last rounds (the last is longest,
    since the model it finetunes has lost the most). They add up to ``epochs``."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    base, rest = divmod(epochs, rounds)
    return [base + (1 if i >= rounds - rest else 0) for i in range(rounds)]


def step_target(target: float, achieved: float) -> float:
    """The speed-up to ask the engine for, pruning a model already at ``achieved`` toward overall ``target``.

    At least 1.001: a round whose previous round already landed past its target still takes a small step (the
    engine prunes toward a target greater than 1), rather than none.
    """
    return max(target / achieved, 1.001)
