"""BatchNorm recalibration after pruning: the statistics it collects, what it leaves alone, and the pipeline's use."""

import json

import pytest
import torch
from torch import nn

from rtdetr_prune.pruning.recalibrate import batchnorms, recalibrate_batchnorm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.03), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()


def _images(n: int = 12, batch: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(batch, 3, 8, 8, generator=g) * 3 + 1 for _ in range(n // batch)]  # far from BN's 0/1 start


def test_statistics_are_the_plain_average_over_every_image():
    net, images = _net(), _images()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert recalibrate_batchnorm(net, net, images, images=12) == 12
    x = torch.cat(images)
    conv_out = net[0](x)  # what the first BatchNorm sees, over all 12 images
    torch.testing.assert_close(net[1].running_mean, conv_out.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    # per-batch unbiased variances, averaged (equal batches): what BatchNorm's cumulative average holds
    per_batch = torch.stack([net[0](b).transpose(0, 1).flatten(1).var(1) for b in images]).mean(0)
    torch.testing.assert_close(net[1].running_var, per_batch, rtol=1e-4, atol=1e-5)
    assert int(net[1].num_batches_tracked) == 3
    for k, v in net.state_dict().items():  # weights and biases untouched
        if k in weights:
            assert torch.equal(v, weights[k]), k
    assert net[1].momentum == 0.03 and net[4].momentum == 0.1, "momenta restored"
    assert not any(m.training for m in net.modules()), "eval mode restored"
    normalized = net[1](net[0](x))  # eval mode: normalized with the new statistics
    assert normalized.mean().abs() < 0.05 and (normalized.var((0, 2, 3)) - 1).abs().max() < 0.1


def test_image_budget_cuts_the_last_batch_and_modes_come_back():
    net = _net().train()
    net[2].eval()  # a mixed state comes back as it was
    assert recalibrate_batchnorm(net, net, _images(12), images=6) == 6
    assert int(net[1].num_batches_tracked) == 2  # 4 + 2 images
    assert net[0].training and net[1].training and not net[2].training


def test_layers_the_forward_does_not_reach_keep_their_statistics():
    net, images = _net(), _images()
    before = net[4].running_mean.clone(), net[4].running_var.clone()
    recalibrate_batchnorm(net, net[:3], images, images=12)  # only the first conv block runs
    assert torch.equal(net[4].running_mean, before[0]) and torch.equal(net[4].running_var, before[1])
    assert not torch.equal(net[1].running_mean, torch.zeros(4))


def test_a_failure_midway_restores_every_statistic():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield _images()[0]
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        recalibrate_batchnorm(net, net, batches, images=12)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="no images"):
        recalibrate_batchnorm(net, net, [], images=12)
    assert torch.equal(net[1].running_mean, before["1.running_mean"])


def test_nothing_to_do_without_tracked_batchnorms():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    assert batchnorms(net) == [] and recalibrate_batchnorm(net, net, _images(), images=8) == 0


def test_pipeline_recalibrates_the_pruned_model(data_yaml, tmp_path):
    """The saved pruned model's statistics are the ones its own activations on the training images give (collecting
    them again changes nothing); --bn-images 0 keeps the unpruned model's, which those activations do not match."""
    import rtdetr_prune
    from rtdetr_prune.data.yolo import data_batches, load_data
    from rtdetr_prune.models import adapter_of, load_model

    runs = {}
    for n in (16, 0):
        rep = rtdetr_prune.prune(model="rtdetr-tiny", data=data_yaml, method="l1", speed_up=1.5, epochs=0, imgsz=160,
                                 batch=4, workers=0, project=str(tmp_path), name=f"bn{n}", latency=False, val=False,
                                 bn_images=n, device="cpu", sensitivity=0)
        state = json.loads((tmp_path / f"bn{n}" / "state.json").read_text())
        assert state["pruned"]["bn_images"] == n
        runs[n] = load_model(tmp_path / f"bn{n}" / "weights" / "pruned_safe")
    assert rep["pruned"]["params"] > 0
    batches = data_batches(load_data(data_yaml), 160, 4, spread=16)
    for n, model in runs.items():
        before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batchnorms(model)]
        recalibrate_batchnorm(model, adapter_of(model).region(), batches, 16)
        after = [(bn.running_mean, bn.running_var) for bn in batchnorms(model)]
        gap = max((a - b).abs().max().item() for (a, _), (b, _) in zip(after, before))
        if n:
            assert gap < 1e-4, "the saved statistics are the pruned model's own"
        else:
            assert gap > 1e-2, "without recalibration the statistics are stale"
