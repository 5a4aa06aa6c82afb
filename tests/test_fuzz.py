"""Property: any small RT-DETR either prunes to a model that runs, or says clearly why it cannot."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdetr_prune.errors import UserError
from rtdetr_prune.pruning.analysis.check import check_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method

width = st.sampled_from([8, 16, 24, 32, 48])


@st.composite
def rtdetr_configs(draw):
    """A random small RT-DETR in Ultralytics YAML form (backbone of convs and RepC3, hybrid encoder, decoder)."""
    c = [draw(width) for _ in range(5)]
    depth = [draw(st.integers(1, 2)) for _ in range(3)]
    heads = draw(st.sampled_from([1, 2, 4]))
    hidden = heads * 4 * draw(st.integers(1, 4))  # AIFI needs hidden % heads == 0 and % 4 == 0
    nc = draw(st.integers(1, 6))
    backbone = [
        [-1, 1, "Conv", [c[0], 3, 2]],
        [-1, 1, "Conv", [c[1], 3, 2]],
        [-1, depth[0], "RepC3", [c[1]]],
        [-1, 1, "Conv", [c[2], 3, 2]],  # 3: P3
        [-1, depth[1], "RepC3", [c[2]]],  # 4
        [-1, 1, "Conv", [c[3], 3, 2]],  # 5: P4
        [-1, depth[2], "RepC3", [c[3]]],  # 6
        [-1, 1, "Conv", [c[4], 3, 2]],  # 7: P5
    ]
    head = [
        [-1, 1, "Conv", [hidden, 1, 1, None, 1, 1, False]],  # 8
        [-1, 1, "AIFI", [hidden * draw(st.sampled_from([1, 2])), heads]],  # 9
        [-1, 1, "Conv", [hidden, 1, 1]],  # 10
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 11
        [6, 1, "Conv", [hidden, 1, 1, None, 1, 1, False]],  # 12
        [[-2, -1], 1, "Concat", [1]],  # 13
        [-1, 1, "RepC3", [hidden, 0.5]],  # 14
        [-1, 1, "Conv", [hidden, 3, 2]],  # 15
        [[-1, 10], 1, "Concat", [1]],  # 16
        [-1, 1, "RepC3", [hidden, 0.5]],  # 17
        [[4, 14, 17], 1, "RTDETRDecoder", [nc, hidden, 10, 4, heads, 1, hidden * 2]],
    ]
    return {"nc": nc, "backbone": backbone, "head": head}, draw(st.sampled_from([64, 96, 128])), \
        draw(st.floats(1.1, 1.6)), draw(st.sampled_from(["l1", "lamp", "group_norm", "random"])), \
        draw(st.booleans())


def _check_case(case):
    from ultralytics.nn.tasks import RTDETRDetectionModel

    cfg, imgsz, speed_up, method, global_pruning = case
    torch.manual_seed(0)
    model = RTDETRDetectionModel(cfg, verbose=False).eval()
    report = check_model(model, imgsz=imgsz, round_to=8)
    assert report["max_speed_up"] >= 1.0
    try:
        result = prune_to_target(model, get_method(method), PruneOptions(
            speed_up=speed_up, imgsz=imgsz, global_pruning=global_pruning, round_to=8))
    except UserError as e:  # a clear "cannot" is an acceptable outcome
        assert str(e)
        return
    assert result.message
    with torch.no_grad():
        y = result.model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    assert y[0].shape == (1, 10, 6) and torch.isfinite(y[0]).all()
    if result.speed_up >= speed_up:
        assert result.speed_up <= speed_up * 1.03 + 1e-9 or "window" in result.message
    else:  # short of the target only where `check` (rounded to 3 decimals) says it is out of reach; and why
        most = report["max_speed_up"]
        assert most < speed_up + 5e-4, f"check says {most}x is reachable, the engine stopped at {result.speed_up:.3f}x: " \
                                f"{result.message}"
        assert "limit" in result.message and result.speed_up >= 0.97 * most, (result.speed_up, most, result.message)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rtdetr_configs())
def test_fuzz_small_configs(case):
    _check_case(case)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rtdetr_configs())
def test_fuzz_small_configs_many(case):
    _check_case(case)
