"""Which images a spread-out subset of a split keeps (data/yolo.py): --bn-images and --sensitivity read through it."""

from __future__ import annotations

import pytest

from rtdetr_prune.data.yolo import _spread, data_batches, load_data


class _Indices:
    """A stand-in dataset whose items are their own indices."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    @staticmethod
    def collate_fn(items: list[int]) -> list[int]:
        return list(items)


def _kept(n: int, asked: int, batch: int = 4) -> list[int]:
    return [i for b in _spread(_Indices(n), batch, asked) for i in b]


@pytest.mark.parametrize("asked", [9, 10, 64, 256])
def test_asking_for_as_many_or_more_than_the_split_keeps_every_image(asked):
    assert _kept(9, asked) == list(range(9))


@pytest.mark.parametrize("n, asked", [(9, 3), (72, 20), (160, 100), (1000, 64)])
def test_fewer_images_asked_are_spread_over_the_whole_split(n, asked):
    kept = _kept(n, asked)
    assert len(kept) == asked and kept == sorted(set(kept))
    gaps = {b - a for a, b in zip(kept, kept[1:])}
    assert max(gaps) - min(gaps) <= 1, "evenly spaced"
    assert kept[0] == 0 and kept[-1] >= n - n // asked - 1, "the last images are reached too, not only the first"


def test_a_real_split_smaller_than_asked_is_read_whole(data_yaml):
    data = load_data(data_yaml)
    every = sum(len(b["img"]) for b in data_batches(data, 160, 4)())
    spread = sum(len(b["img"]) for b in data_batches(data, 160, 4, spread=256)())
    assert spread == every > 0
