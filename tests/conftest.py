"""Shared fixtures: tiny models and a tiny synthetic dataset, so every test runs in seconds on CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")  # no progress bars in test logs
torch.set_num_threads(1)  # predictable on shared 2-core machines: OpenMP spin-waits badly when oversubscribed

IMGSZ = 160  # tiny-model tests: a multiple of 32 with a 5x5 P5 map for AIFI


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory) -> str:
    """A 24-image, 3-class synthetic detection dataset (YOLO format)."""
    from rtdetr_prune.data import make_synthetic

    return str(make_synthetic(tmp_path_factory.mktemp("shapes"), images=24, imgsz=IMGSZ, seed=0))


@pytest.fixture
def tiny():
    """A fresh tiny RT-DETR with 3 classes, random weights, eval mode."""
    from rtdetr_prune.models import load_model

    torch.manual_seed(0)
    return load_model("rtdetr-tiny", nc=3)


def fake_batch(nc: int = 3, batch: int = 2, imgsz: int = IMGSZ, seed: int = 0) -> dict:
    """An Ultralytics-style training batch with two boxes per image (for model.loss)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * batch
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "batch_idx": torch.arange(batch).repeat_interleave(2).float(),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.full((n, 2), 0.2)], 1),
    }
