"""Users' own structures: built-in handling of YOLO blocks, rules for unknown modules, rewrites, `check`'s advice.

The probe's zeroed-channel trial is the ground truth here: a group is prunable only if removing channels
that were zeroed first leaves every output unchanged (see rtdetr_prune.pruning.analysis.prunable). So "the block's groups are
prunable" below also means "Torch-Pruning removes its channels correctly".
"""

import copy
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from conftest import IMGSZ, fake_batch
from torch import nn
from ultralytics.nn.modules.block import SPPF, C2f, C2fPSA, C3k2, GhostBottleneck
from ultralytics.nn.modules.conv import Conv, DWConv, GhostConv

from rtdetr_prune.errors import UserError
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.adapter import RTDETRAdapter
from rtdetr_prune.models.ultralytics.rewrites import SplitC2f
from rtdetr_prune.pruning import rules
from rtdetr_prune.pruning.analysis.check import check_model, format_check
from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method

EXAMPLES = Path(__file__).parent.parent / "examples"
YOLO_NECK = str(EXAMPLES / "rtdetr-yolo-neck.yaml")


def with_block(model, block: nn.Module, idx: int = 10):
    """``model`` with ``block`` run right after layer ``idx`` (a 64-channel P4 neck layer of rtdetr-tiny)."""
    inner = model.model[idx]
    seq = nn.Sequential(inner, block)
    for k in ("i", "f", "type", "np"):  # Ultralytics' routing attributes
        setattr(seq, k, getattr(inner, k))
    model.model[idx] = seq
    return model


def region_outputs(model, x):
    with torch.no_grad():
        return RTDETRAdapter(model).region()(x)


def skips_in(plan, prefix: str) -> dict[str, str]:
    return {s.layer: s.kind for s in plan.skipped if s.layer.startswith(prefix)}


class HeadSplitAttention(nn.Module):
    """Attention with separate q/k/v 1x1 convs and a reshape into heads (as users write it)."""

    def __init__(self, c: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (f(x).view(b, self.heads, -1, h * w) for f in (self.q, self.k, self.v))
        attn = (q.transpose(-2, -1) @ k * q.shape[2] ** -0.5).softmax(-1)
        return x + self.proj((v @ attn.transpose(-2, -1)).reshape(b, -1, h, w))


# --- 1. Built-in handling of the blocks users put into RT-DETR ---------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: C2f(64, 64, 1, True), lambda: C3k2(64, 64, 1, True), lambda: SPPF(64, 64, 5), lambda: DWConv(64, 64, 3),
    lambda: GhostConv(64, 64), lambda: GhostBottleneck(64, 64),
], ids=["C2f", "C3k2-c3k", "SPPF", "DWConv", "GhostConv", "GhostBottleneck"])
def test_yolo_blocks_prune_correctly(tiny, make):
    model = with_block(tiny, make())
    rules.apply_rewrites(model)
    plan = analyse(model)
    assert not skips_in(plan, "model.10."), "every group of the block passes the zeroed-channel trial"
    assert any(k.startswith("model.10.1.") for k in plan.prunable)


def test_c2f_without_the_rewrite_is_caught_not_mispruned(tiny):
    """Torch-Pruning maps C2f's chunk wrongly; the trial must catch it rather than let it prune."""
    with rules.scoped():
        rules.unregister(C2f)
        plan = analyse(with_block(tiny, C2f(64, 64, 1, True)))
    assert set(skips_in(plan, "model.10.1.").values()) <= {"breaks", "changes-outputs"}
    assert skips_in(plan, "model.10.1.")
    assert C2f in rules.rewrites(), "scoped() restored the built-in rewrite"


@pytest.mark.parametrize("block", [C2f(64, 64, 2, True), C3k2(64, 64, 1, True), C2fPSA(64, 64, 1)],
                         ids=["C2f-n2", "C3k2-c3k", "C2fPSA"])
def test_rewrite_keeps_outputs_identical(tiny, block):
    model = with_block(tiny, block)
    x = torch.randn(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    rewritten = copy.deepcopy(model)
    assert rules.apply_rewrites(rewritten) == ["model.10.1"]
    assert isinstance(rewritten.model[10][1], SplitC2f)
    for mode in ("eval", "train"):  # train: BatchNorm uses batch statistics, the split convs must too
        getattr(model, mode)(), getattr(rewritten, mode)()
        for a, b in zip(region_outputs(model, x), region_outputs(rewritten, x)):
            assert (a - b).abs().max() <= 1e-5
    with torch.no_grad():
        assert (model.eval()(x)[0] - rewritten.eval()(x)[0]).abs().max() <= 1e-5
    assert rules.apply_rewrites(rewritten) == [], "applying twice changes nothing"


def test_grouped_conv_and_head_split_attention_are_skipped_with_reasons(tiny):
    model = with_block(with_block(tiny, Conv(64, 64, 3, 1, g=4)), HeadSplitAttention(), idx=15)
    plan = analyse(model)
    grouped = skips_in(plan, "model.10.")
    assert grouped and set(grouped.values()) == {"grouped-conv"}
    attention = skips_in(plan, "model.15.1.")
    assert attention and set(attention.values()) <= {"breaks", "changes-outputs"}


def test_c2f_sppf_neck_prunes_to_target_and_runs():
    torch.manual_seed(0)
    model = load_model(YOLO_NECK, nc=3)
    result = prune_to_target(model, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ))
    assert 1.5 <= result.speed_up <= 1.5 * 1.03, result.message
    pruned = result.model
    assert sum(isinstance(m, SplitC2f) for m in pruned.modules()) == 4  # three C2f and one C3k2
    assert pruned.model[11].cv0.conv.out_channels < 32 or pruned.model[11].cv1.conv.out_channels < 32
    assert pruned.model[5].cv1.conv.out_channels < 32, "SPPF's hidden width is pruned"
    with torch.no_grad():
        assert pruned.eval()(torch.zeros(2, 3, IMGSZ, IMGSZ))[0].shape == (2, 30, 6)
    pruned.train()
    loss, _ = pruned.loss(fake_batch())
    assert torch.isfinite(loss).all()


# --- 2. A module unknown to the toolkit: skipped by default, pruned once its rule is registered -------------

class LearnedScale(nn.Module):
    """``x * scale``, one learnable scale per channel: a parameter Torch-Pruning cannot slice by itself."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class LearnedScalePruner(tp.pruner.BasePruningFunc):
    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.scale.numel()) if i not in set(idxs)]
        layer.scale = nn.Parameter(layer.scale.data[keep].clone())
        return layer

    prune_in_channels = prune_out_channels  # input and output are the same channels

    def get_out_channels(self, layer):
        return layer.scale.numel()

    get_in_channels = get_out_channels


def test_unknown_module_is_skipped_then_pruned_with_its_rule(tiny):
    model = with_block(tiny, LearnedScale(64))
    plan = analyse(model)
    held = [s for s in plan.skipped if "LearnedScale" in s.reason]
    assert held and {s.kind for s in held} == {"custom-params"}
    assert "model.10.0.cv3.conv" not in plan.prunable
    with rules.scoped():
        rules.prune_rule(LearnedScale, LearnedScalePruner())
        plan = analyse(model)
        assert not [s for s in plan.skipped if "LearnedScale" in s.reason]
        assert "model.10.0.cv3.conv" in plan.prunable
        result = prune_to_target(model, get_method("l1"), PruneOptions(speed_up=1.5, imgsz=IMGSZ, global_pruning=True))
        assert result.speed_up >= 1.5
        assert result.model.model[10][1].scale.numel() == result.model.model[10][0].cv3.conv.out_channels < 64
        with torch.no_grad():
            assert result.model.eval()(torch.zeros(1, 3, IMGSZ, IMGSZ))[0].shape == (1, 30, 6)
    assert LearnedScale not in rules.customized_pruners()


def test_a_wrong_rule_is_caught_by_the_trial(tiny):
    """A pruner that forgets a parameter's channels leaves the model inconsistent: the trial says so."""

    class ForgetfulPruner(LearnedScalePruner):
        def prune_out_channels(self, layer, idxs):
            return layer  # removes nothing: the scale no longer lines up with its input

        prune_in_channels = prune_out_channels

    with rules.scoped():
        rules.prune_rule(LearnedScale, ForgetfulPruner())
        plan = analyse(with_block(tiny, LearnedScale(64)))
    assert skips_in(plan, "model.10.0.cv3.conv") == {"model.10.0.cv3.conv": "breaks"}


def test_protect_keeps_a_type_whole_with_the_users_reason(tiny):
    with rules.scoped():
        rules.protect(SPPF, "our paper keeps SPPF at full width")
        plan = analyse(with_block(tiny, SPPF(64, 64, 5)))
    held = skips_in(plan, "model.10.1.")
    assert held and set(held.values()) == {"rule"}
    assert all("our paper keeps SPPF" in s.reason for s in plan.skipped if s.layer.startswith("model.10.1."))


def test_rule_registration_errors_say_how_to_fix():
    with pytest.raises(UserError, match="instance"):
        rules.prune_rule(LearnedScale, LearnedScalePruner)
    with pytest.raises(UserError, match="BasePruningFunc"):
        rules.prune_rule(LearnedScale, object())
    with pytest.raises(UserError, match="reason"):
        rules.protect(LearnedScale, "")
    with pytest.raises(UserError, match="not found"):
        rules.load_plugin("no/such/plugin.py")


def test_plugin_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise ValueError('oops')\n")
    with pytest.raises(UserError, match="bad_plugin.py' failed to import: ValueError: oops"):
        rules.load_plugin(bad)


def test_rewritten_model_reloads_by_name(tiny):
    """A saved model records which layers were rewritten; rebuilding applies just those rewrites."""
    model = with_block(tiny, C2f(64, 64, 1, True))
    names = rules.apply_rewrites(model)
    assert rules.rewritten_names(model) == names == ["model.10.1"]
    fresh = with_block(load_model("rtdetr-tiny", nc=3), C2f(64, 64, 1, True))
    assert rules.apply_rewrites(fresh, names=names) == names
    with rules.scoped(), pytest.raises(UserError, match="no rewrite is registered"):
        rules.unregister(C2f)
        rules.apply_rewrites(with_block(load_model("rtdetr-tiny", nc=3), C2f(64, 64)), names=names)


# --- 3. `check` explains each skip: why, what to do, what it costs ------------------------------------------

def test_check_explains_each_skip_and_its_cost(tiny):
    model = with_block(tiny, LearnedScale(64))
    r = check_model(model, imgsz=IMGSZ)
    today = ("prunable", "groups", "gflops", "share", "max_speed_up", "settings", "protected", "skipped", "rewritten")
    assert set(today) <= set(r)
    for e in r["protected"] + r["skipped"]:
        assert e["reason"] and e["advice"] and 0 <= e["gflops_share"] <= 1
        assert e["speed_up_if_prunable"] is None or e["speed_up_if_prunable"] >= r["max_speed_up"] - 1e-3
    held = [e for e in r["skipped"] if e["kind"] == "custom-params"]
    assert held and "prune_rule" in held[0]["advice"]
    assert held[0]["speed_up_if_prunable"] > r["max_speed_up"], "lifting it would reach further"
    assert r["max_speed_up_if_all_prunable"] >= held[0]["speed_up_if_prunable"] - 1e-3
    text = format_check({**r, "model": "tiny+scale"})
    assert "what to do: register a prune_rule" in text and "max reachable speed-up" in text


def test_a_plugin_loaded_again_after_its_scope_registers_its_rules_again():
    """scoped() undoes a plugin's registrations; loading the file again later must register them again (it used to
    return the cached module, whose rules were gone: a second run in the same process pruned without them)."""
    def scaled_residual_rule() -> bool:
        return any(cls.__name__ == "ScaledResidual" for cls in rules.customized_pruners())

    for _ in range(2):
        with rules.scoped():
            rules.load_plugin(EXAMPLES / "my_modules.py")
            rules.load_plugin(EXAMPLES / "my_rules.py")
            assert scaled_residual_rule()
        assert not scaled_residual_rule()
