"""Issue 14's acceptance on the real architectures (80 classes, 640 px): transformers' RT-DETR R18-vd pruned to
1.5x by every method, RT-DETRv2 R18-vd to 2x by lamp; each reloads identical from the safe format and runs
transformers' post-processing. Slow on CPU (minutes per method): ``pytest -m slow tests/test_transformers_r18.py``.
benchmarks/transformers_acceptance.py runs the same checks and records the numbers (ONNX included)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import fake_batch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from test_transformers import lively  # noqa: E402

from rtdetr_prune.models import family_of, load_model  # noqa: E402
from rtdetr_prune.pruning.analysis import analyse, check_model  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target  # noqa: E402
from rtdetr_prune.pruning.methods import METHODS, get_method  # noqa: E402

IMGSZ = 640


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    model = lively(load_model("hf-rtdetr-r18vd", nc=80))
    return model, analyse(model, 16)


def _prune_and_reload(model, plan, method: str, target: float, tmp_path):
    batches = lambda: iter([fake_batch(nc=80, batch=1, imgsz=IMGSZ, seed=i) for i in range(2)])  # noqa: E731
    result = prune_to_target(model, get_method(method), PruneOptions(speed_up=target, imgsz=IMGSZ, grad_batches=2),
                             batches=batches, plan=plan)
    assert target <= result.speed_up <= target * 1.03, result.message
    family_of(result.model).save_safe(result.model, tmp_path / "safe")
    loaded = load_model(tmp_path / "safe")
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = result.model.eval()(pixel_values=x), loaded(pixel_values=x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)
    found = transformers.RTDetrImageProcessor().post_process_object_detection(b, target_sizes=[(IMGSZ, IMGSZ)])
    assert found[0]["boxes"].shape[-1] == 4
    return loaded


@pytest.mark.slow
def test_r18_check_at_640(r18):
    model, plan = r18
    report = check_model(model, imgsz=IMGSZ, plan=plan)
    assert report["share"]["prunable"] > 0.8 and report["max_speed_up"] > 3.0
    assert [s["kind"] for s in report["skipped"]] == ["rtdetr"]  # AIFI's embedding width only


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_r18_every_method_to_1_5x(r18, method, tmp_path):
    model, plan = r18
    loaded = _prune_and_reload(model, plan, method, 1.5, tmp_path)
    assert type(loaded) is transformers.RTDetrForObjectDetection


@pytest.mark.slow
def test_v2_r18_lamp_to_2x(tmp_path):
    torch.manual_seed(0)
    model = lively(load_model("hf-rtdetr-v2-r18vd", nc=80))
    loaded = _prune_and_reload(model, analyse(model, 16), "lamp", 2.0, tmp_path)
    assert type(loaded) is transformers.RTDetrV2ForObjectDetection
