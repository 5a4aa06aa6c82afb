"""All ten methods on the real RT-DETR-R18 (10 classes). GFLOPs are counted at 320 px to keep the default
suite fast on 2 CPU cores; the 640 px run of the same check is marked slow."""

import pytest
import torch
from conftest import fake_batch
from test_engine import assert_works

from rtdetr_prune.models import load_model
from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import METHODS, get_method


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    model = load_model("rtdetr-r18", nc=10)
    return model, analyse(model, 8)


def _batches(imgsz):
    return lambda: iter([fake_batch(nc=10, batch=1, imgsz=imgsz, seed=i) for i in range(2)])


def _prune(model, plan, name, imgsz):
    options = PruneOptions(speed_up=1.5, imgsz=imgsz, grad_batches=2)
    return prune_to_target(model, get_method(name), options, batches=_batches(imgsz), plan=plan)


@pytest.mark.parametrize("name", list(METHODS))
def test_r18_every_method_to_1_5x(r18, name):
    model, plan = r18
    result = _prune(model, plan, name, 320)
    assert 1.5 <= result.speed_up <= 1.545, result.message
    assert_works(result.model, nc=10, queries=300, imgsz=320)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_r18_every_method_to_1_5x_at_640(r18, name):
    model, plan = r18
    result = _prune(model, plan, name, 640)
    assert 1.5 <= result.speed_up <= 1.545, result.message
    assert_works(result.model, nc=10, queries=300, imgsz=640)
