"""Every method prunes to the target, and the pruned model still works (eval, train, loss)."""

import math

import pytest
import torch
from conftest import IMGSZ, fake_batch

from rtdetr_prune.errors import UserError
from rtdetr_prune.measure import counts as metrics
from rtdetr_prune.pruning.analysis.check import check_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.graph import trace
from rtdetr_prune.pruning.methods import METHODS, get_method


def _batches():
    return iter([fake_batch(seed=i) for i in range(2)])


def assert_works(model, nc=3, queries=30, imgsz=IMGSZ):
    """Eval output (B, queries, 6): xyxy, score, class; train-mode loss is finite and backpropagates."""
    model.eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 3, imgsz, imgsz))
    assert y[0].shape == (2, queries, 6)
    assert torch.isfinite(y[0]).all()
    assert y[0][..., 5].max() < nc and ((y[0][..., 4] >= 0) & (y[0][..., 4] <= 1)).all()
    model.train()
    batch = fake_batch(nc=nc, imgsz=imgsz)
    loss, items = model.loss(batch)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_prunes_tiny_to_target(tiny, name):
    method = get_method(name)
    result = prune_to_target(tiny, method, PruneOptions(speed_up=1.5, imgsz=IMGSZ), batches=_batches)
    assert 1.5 <= result.speed_up <= 1.545, result.message
    # the achieved figure is the real one: recount from scratch
    assert metrics.gflops(tiny, IMGSZ) / metrics.gflops(result.model, IMGSZ) == pytest.approx(result.speed_up, rel=1e-6)
    assert result.history[0]["speed_up"] == 1.0 and result.history[-1]["params"] < result.history[0]["params"]
    assert_works(result.model)


def test_caller_model_is_not_modified(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    prune_to_target(tiny, get_method("l1"), PruneOptions(speed_up=1.3, imgsz=IMGSZ))
    after = tiny.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_channels_are_rounded_and_capped(tiny):
    """Every group ends on a multiple of round_to and no lower than its floor: at most max_layer_ratio of its
    original width removed (the floor rounded up to round_to; one unit at least). The target is past what the
    caps allow, so groups do reach their floors: the check binds."""
    unit, ratio = 8, 0.5
    graph = trace(tiny)
    original = {graph.key(g): graph.root_width(g) for g in graph.all_groups()}
    result = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=3.0, imgsz=IMGSZ, round_to=unit,
                                                                    max_layer_ratio=ratio))
    assert "limit" in result.message, result.message
    floors = {k: max(unit, unit * math.ceil((1 - ratio) * original[k] / unit)) for k in result.widths}
    for key, width in result.widths.items():
        assert width % unit == 0 and floors[key] <= width <= original[key], (key, width, floors[key], original[key])
    at_floor = [k for k, w in result.widths.items() if w == floors[k] < original[k]]
    assert len(at_floor) > len(result.widths) // 2, at_floor


def test_engine_reaches_the_maximum_check_reports(tiny):
    """`check`'s max_speed_up is what pruning every group to its floor gives: asking the engine for it gets there."""
    most = check_model(tiny, imgsz=IMGSZ, round_to=8)["max_speed_up"]
    result = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=most, imgsz=IMGSZ, round_to=8))
    assert result.speed_up >= 0.97 * most, (result.speed_up, most, result.message)


def test_global_pruning_reaches_target(tiny):
    result = prune_to_target(tiny, get_method("group_norm"), PruneOptions(speed_up=1.5, imgsz=IMGSZ, global_pruning=True))
    assert 1.5 <= result.speed_up <= 1.545
    assert_works(result.model)


def test_aifi_feed_forward_is_pruned_and_attention_kept(tiny):
    result = prune_to_target(tiny, get_method("l1"), PruneOptions(speed_up=2.0, imgsz=IMGSZ, global_pruning=True))
    aifi = result.model.model[5]
    assert aifi.ma.embed_dim == 64 and aifi.ma.num_heads == 4  # attention width untouched
    assert any(s.layer == "model.5.fc2" and "position" in s.reason for s in result.skipped)


def test_max_steps_stops_with_a_message(tiny):
    result = prune_to_target(tiny, get_method("l1"), PruneOptions(speed_up=2.5, imgsz=IMGSZ, max_steps=1))
    assert result.steps == 1 and result.speed_up < 2.5
    assert "max_steps=1" in result.message


def test_unreachable_target_stops_at_the_limit(tiny):
    result = prune_to_target(tiny, get_method("l1"), PruneOptions(speed_up=50, imgsz=IMGSZ, step_ratio=0.5))
    assert result.speed_up < 50 and "limit" in result.message


def test_gradient_methods_need_data(tiny):
    with pytest.raises(ValueError, match="gradients"):
        prune_to_target(tiny, get_method("group_taylor"), PruneOptions(speed_up=1.5, imgsz=IMGSZ))


@pytest.mark.parametrize("bad", [dict(speed_up=1.0), dict(speed_up=0.5), dict(imgsz=100), dict(step_ratio=1.5)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError):
        PruneOptions(**bad)


def test_same_seed_same_channels(tiny):
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(prune_to_target(tiny, get_method("random"), PruneOptions(speed_up=1.3, imgsz=IMGSZ)))
    sa, sb = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_frozen_checkpoint_still_prunes(tiny):
    """Ultralytics saves finished checkpoints with requires_grad=False; tracing must not lose every group."""
    tiny.requires_grad_(False)
    result = prune_to_target(tiny, get_method("group_taylor"), PruneOptions(speed_up=1.5, imgsz=IMGSZ), batches=_batches)
    assert 1.5 <= result.speed_up <= 1.545
    assert not any(p.requires_grad for p in tiny.parameters()), "the caller's model is left as it was"
