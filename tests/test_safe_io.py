"""The safe format (safetensors + JSON spec) rebuilds pruned models exactly, without unpickling anything."""

import json
import pickle
import shutil

import pytest
import torch
from conftest import IMGSZ, fake_batch
from torch import nn

from rtdetr_prune.errors import UserError
from rtdetr_prune.io.safe import FORMAT
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.models.ultralytics.safe import load_safe, save_safe
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method

# An rtdetr-l in miniature: HGNet stem and blocks, stride-2 depthwise convs and LightConv blocks
# (1x1 conv + depthwise conv), so pruning changes conv groups as it does in rtdetr-l.
HG_TINY_YAML = """
nc: 80
backbone:
  - [-1, 1, HGStem, [16, 24]] # 0 P2/4
  - [-1, 1, HGBlock, [16, 32, 3]] # 1
  - [-1, 1, DWConv, [32, 3, 2, 1, False]] # 2 P3/8
  - [-1, 1, HGBlock, [24, 64, 3]] # 3
  - [-1, 1, DWConv, [64, 3, 2, 1, False]] # 4 P4/16
  - [-1, 1, HGBlock, [32, 96, 5, True, False]] # 5
  - [-1, 1, DWConv, [96, 3, 2, 1, False]] # 6 P5/32
  - [-1, 1, HGBlock, [48, 128, 5, True, False]] # 7
head:
  - [-1, 1, Conv, [64, 1, 1, None, 1, 1, False]] # 8
  - [-1, 1, AIFI, [128, 4]] # 9
  - [-1, 1, Conv, [64, 1, 1]] # 10
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]] # 11
  - [5, 1, Conv, [64, 1, 1, None, 1, 1, False]] # 12
  - [[-2, -1], 1, Concat, [1]] # 13
  - [-1, 1, RepC3, [64, 0.5]] # 14
  - [-1, 1, Conv, [64, 1, 1]] # 15
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]] # 16
  - [3, 1, Conv, [64, 1, 1, None, 1, 1, False]] # 17
  - [[-2, -1], 1, Concat, [1]] # 18
  - [-1, 1, RepC3, [64, 0.5]] # 19
  - [-1, 1, Conv, [64, 3, 2]] # 20
  - [[-1, 15], 1, Concat, [1]] # 21
  - [-1, 1, RepC3, [64, 0.5]] # 22
  - [-1, 1, Conv, [64, 3, 2]] # 23
  - [[-1, 10], 1, Concat, [1]] # 24
  - [-1, 1, RepC3, [64, 0.5]] # 25
  - [[19, 22, 25], 1, RTDETRDecoder, [nc, 64, 30, 4, 4, 1, 128]] # 26
"""


@pytest.fixture(scope="module")
def pruned():
    """A tiny RT-DETR pruned 1.5x with LAMP (eval mode), shared by the tests of this file."""
    torch.manual_seed(0)
    return prune_to_target(load_model("rtdetr-tiny", nc=3), get_method("lamp"),
                           PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model.eval()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """An unpruned tiny model saved in the safe format; tests copy it before damaging it."""
    torch.manual_seed(0)
    return save_safe(load_model("rtdetr-tiny", nc=3), tmp_path_factory.mktemp("safe") / "tiny")


def _out(model: nn.Module, imgsz: int = IMGSZ) -> torch.Tensor:
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)[0]


def _sizes(model: nn.Module) -> dict[str, tuple]:
    """Every conv's (in, out, groups), by name."""
    return {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / "copy")


def _edit_spec(d, edit) -> None:
    spec = json.loads((d / "model.json").read_text())
    edit(spec)
    (d / "model.json").write_text(json.dumps(spec))


def test_unpruned_round_trip(tiny, tmp_path):
    out = save_safe(tiny, tmp_path / "m", meta={"method": "none"})
    spec = json.loads((out / "model.json").read_text())
    assert spec["format"] == FORMAT and spec["nc"] == 3 and spec["meta"] == {"method": "none"}
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"], "no temp files left"
    expected = _out(tiny)
    for path in (out, out / "model.json"):
        model = load_model(path)  # the zoo dispatches directories and .json files here
        assert not model.training and model.names == tiny.names and model.yaml == tiny.yaml
        assert torch.equal(_out(model), expected)


def test_pruned_round_trip_matches_checkpoint(pruned, tmp_path):
    out = save_safe(pruned, tmp_path / "safe")
    pt = save_checkpoint(pruned, tmp_path / "pruned.pt")
    safe, from_pt = load_safe(out), load_model(pt)
    assert _sizes(safe) == _sizes(pruned) == _sizes(from_pt)
    assert _sizes(safe) != _sizes(load_model("rtdetr-tiny", nc=3)), "the fixture really is pruned"
    assert safe.state_dict().keys() == pruned.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(safe.state_dict().values(), pruned.state_dict().values()))
    expected = _out(pruned)
    assert torch.equal(_out(safe), expected)
    assert torch.equal(_out(from_pt), expected)


def test_pruned_cached_widths_follow_weights(pruned, tmp_path):
    """Ultralytics' RepConv caches its channel counts; the rebuilt model has them at the pruned widths."""
    from ultralytics.nn.modules.conv import RepConv

    safe = load_safe(save_safe(pruned, tmp_path / "safe"))
    reps = [m for m in safe.modules() if isinstance(m, RepConv)]
    assert reps and all((m.c1, m.c2) == (m.conv1.conv.in_channels, m.conv1.conv.out_channels) for m in reps)
    assert any(m.c2 < 32 for m in reps), "RepC3's hidden width (32) was pruned somewhere"


def test_rebuilt_pruned_model_trains(pruned, tmp_path):
    model = load_safe(save_safe(pruned, tmp_path / "safe")).train()
    loss, _ = model.loss(fake_batch())
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_loading_never_unpickles(saved_tiny, tmp_path, monkeypatch):
    pt = save_checkpoint(load_model(saved_tiny), tmp_path / "control.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("the safe loader must not unpickle anything")

    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load"), (torch.serialization, "load")]:
        monkeypatch.setattr(target, name, refuse)
    with pytest.raises(AssertionError, match="unpickle"):
        load_model(pt)  # control: the patch does catch a pickle load
    assert torch.isfinite(_out(load_safe(saved_tiny))).all()


def test_pretrained_backbone_name_is_not_fetched(saved_tiny, tmp_path):
    """The YAML may name pretrained TorchVision weights; the saved weights replace them, so none are fetched."""
    d = _copy(saved_tiny, tmp_path)
    _edit_spec(d, lambda s: s["yaml"]["backbone"][0][3].__setitem__(2, "DEFAULT"))
    model = load_safe(d)
    assert model.yaml["backbone"][0][3][2] == "DEFAULT", "the spec's YAML is kept as saved"
    assert torch.equal(_out(model), _out(load_safe(saved_tiny)))


def test_global_pruned_depthwise_round_trip(tmp_path):
    """Pruning a depthwise conv changes its groups; the spec carries them, so the rebuild is exact."""
    cfg = tmp_path / "hg-tiny.yaml"
    cfg.write_text(HG_TINY_YAML)
    torch.manual_seed(0)
    base = load_model(cfg, nc=3)
    # One big global step (target counted at 64 px, wide tolerance): enough to prune depthwise convs, fast.
    opts = PruneOptions(speed_up=1.3, imgsz=64, global_pruning=True, step_ratio=0.5, tolerance=1.0, max_steps=1)
    pruned = prune_to_target(base, get_method("lamp"), opts).model.eval()
    _assert_depthwise_round_trip(base, pruned, tmp_path)


@pytest.mark.slow
def test_global_pruned_rtdetr_l_round_trip(tmp_path):
    torch.manual_seed(0)
    base = load_model("rtdetr-l", nc=3)
    opts = PruneOptions(speed_up=1.3, imgsz=320, global_pruning=True)
    pruned = prune_to_target(base, get_method("lamp"), opts).model.eval()
    _assert_depthwise_round_trip(base, pruned, tmp_path)


def _assert_depthwise_round_trip(base: nn.Module, pruned: nn.Module, tmp_path) -> None:
    before, after = _sizes(base), _sizes(pruned)
    regrouped = [n for n, (c_in, c_out, g) in after.items() if 1 < g == c_in == c_out and g < before[n][2]]
    assert regrouped, "some depthwise conv lost channels (and so groups)"
    safe = load_safe(save_safe(pruned, tmp_path / "safe"))
    assert _sizes(safe) == after
    assert torch.equal(_out(safe), _out(pruned))


def test_resave_replaces_earlier_save(pruned, saved_tiny, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    save_safe(pruned, d)
    assert _sizes(load_safe(d)) == _sizes(pruned)


def test_missing_weights_file(saved_tiny, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"model\.safetensors' not found.*copy both files together"):
        load_safe(d)


def test_directory_without_spec(tmp_path):
    with pytest.raises(UserError, match="has no model.json"):
        load_safe(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_safe(tmp_path / "absent.json")


@pytest.mark.parametrize("fmt, hint", [("rtdetr-prune-safe/2", "different version"), ("something-else", "not a model spec")])
def test_wrong_format(saved_tiny, tmp_path, fmt, hint):
    d = _copy(saved_tiny, tmp_path)
    _edit_spec(d, lambda s: s.update(format=fmt))
    with pytest.raises(UserError, match=hint):
        load_safe(d)


def test_corrupt_spec(saved_tiny, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    (d / "model.json").write_text('{"format": "rtdetr-prune-safe/1", "yaml": ')
    with pytest.raises(UserError, match="not valid JSON"):
        load_safe(d)


def test_weights_from_another_save(saved_tiny, pruned, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    other = save_safe(pruned, tmp_path / "pruned")
    shutil.copy(other / "model.safetensors", d / "model.safetensors")
    with pytest.raises(UserError, match="SHA-256"):
        load_safe(d)


def test_truncated_weights(saved_tiny, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(UserError, match="SHA-256"):
        load_safe(d)


def test_widths_that_contradict_weights(saved_tiny, tmp_path):
    """Widths edited by hand (checksum still valid): the layer's shape check names the layer."""
    d = _copy(saved_tiny, tmp_path)
    _edit_spec(d, lambda s: s["widths"]["model.4.conv"].update(out_channels=56))
    with pytest.raises(UserError, match=r"model\.4\.conv.*\(64, 128, 1, 1\).*need \(56, 128, 1, 1\)"):
        load_safe(d)


def test_impossible_groups(saved_tiny, tmp_path):
    d = _copy(saved_tiny, tmp_path)
    _edit_spec(d, lambda s: s["widths"]["model.4.conv"].update(groups=3))
    with pytest.raises(UserError, match="impossible widths"):
        load_safe(d)


def test_weights_of_another_architecture(saved_tiny, pruned, tmp_path):
    """Pruned weights under the unpruned spec (checksum made to match): the shape check catches it."""
    import hashlib

    d = _copy(saved_tiny, tmp_path)
    other = save_safe(pruned, tmp_path / "pruned")
    data = (other / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data)
    _edit_spec(d, lambda s: s.update(weights_sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(UserError, match="different models"):
        load_safe(d)
