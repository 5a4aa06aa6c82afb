"""The model zoo: sizes match the papers and the seed, and every way of naming a model works."""

import pytest
import torch

from rtdetr_prune.errors import UserError
from rtdetr_prune.measure import counts as metrics
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.zoo import ZOO


def test_r18_matches_the_seed_baseline():
    """Seed (VisDrone, nc=10, 640): 19,884,600 params, 57.0 GFLOPs, as Ultralytics prints them (fused)."""
    params, flops = metrics.params_and_gflops(load_model("rtdetr-r18", nc=10), 640)
    assert params == pytest.approx(19_884_600, rel=0.02)
    assert flops == pytest.approx(57.0, rel=0.03)


def test_r34_matches_the_paper():
    """RT-DETR paper, R34 at 640 (nc=80): 31M params, 92 GFLOPs."""
    params, flops = metrics.params_and_gflops(load_model("rtdetr-r34", nc=80), 640)
    assert params == pytest.approx(31e6, rel=0.05)
    assert flops == pytest.approx(92.0, rel=0.08)


def test_r18_uses_the_vd_basic_block_backbone():
    m = load_model("rtdetr-r18")
    backbone = m.model[0].m
    names = [type(c).__name__ for c in backbone.children()]
    assert names == ["_Stem", "MaxPool2d", "_Stage", "_Stage", "_Stage", "_Stage"]
    assert [len(s.blocks) for s in list(backbone.children())[2:]] == [2, 2, 2, 2]
    assert type(backbone[3].blocks[0].short.pool).__name__ == "AvgPool2d"  # the "d" in ResNet-vd


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_name_builds(name):
    m = load_model(name, nc=5)
    assert m.model[-1].nc == 5 and m.nc == 5


def test_yaml_path_and_stock_ultralytics_engine():
    from ultralytics import RTDETR

    r = RTDETR(ZOO["rtdetr-tiny"])  # the stock engine builds our backbone once rtdetr_prune is imported
    with torch.no_grad():
        y = r.model.eval()(torch.zeros(1, 3, 160, 160))
    assert y[0].shape[-1] == 6


def test_unknown_name_suggests():
    with pytest.raises(UserError, match="Did you mean 'rtdetr-r18'"):
        load_model("rtdetr-r81")


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.yaml")


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(UserError, match="could not be loaded"):
        load_model(bad)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_model(empty)


def test_a_yolo_model_is_rejected():
    with pytest.raises(UserError, match="not an RT-DETR"):
        load_model(_yolo_yaml())


def _yolo_yaml() -> str:
    from ultralytics.utils.checks import check_yaml

    return check_yaml("yolov8.yaml")
