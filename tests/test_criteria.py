"""Our criteria against Torch-Pruning's on tiny hand-built nets with hand-computed answers.

Each fix is shown twice: TP's class gives the wrong number (or raises), ours gives the right one.
"""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from rtdetr_prune.pruning.criteria import (
    BNScalePruner,
    GroupNormPruner,
    GrowingRegPruner,
    HessianImportance,
    TaylorImportance,
)

IMG = torch.zeros(1, 1, 2, 2)


def _set(param, value, grad=None):
    """Fill a parameter (and optionally its gradient) with the given values, broadcast to its shape."""
    with torch.no_grad():
        param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))
    if grad is not None:
        param.grad = torch.as_tensor(grad, dtype=param.dtype).expand_as(param).clone()


def _zero_grads(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def _group(model, root, example):
    """The full-width group of root's output channels."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
    return dg.get_pruning_group(root, handler, list(range(root.weight.shape[0])))


def _conv_bn_conv_bn():
    """Conv(1->2)-BN-ReLU-Conv(2->2)-BN, all 1x1, no conv bias."""
    return nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2))


class _Residual(nn.Module):
    """Two Conv-BN branches summed, then a conv: one group holds both BNs, the head's group none."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)
        self.b, self.bn_b = nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        return self.head(self.bn_a(self.a(x)) + self.bn_b(self.b(x)))


class _Concat(nn.Module):
    """Two convs concatenated into one BN: each conv's group owns half of the BN's channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(1, 2, 1, bias=False)
        self.bn, self.head = nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.bn(torch.cat([self.a(x), self.b(x)], 1)))


# ---------------------------------------------------------------- Hessian


def test_hessian_averages_squared_gradients_and_leaves_grads_alone():
    # Channel c has every weight equal to c+1 in all three terms (Linear rows, LN scale, next
    # Linear's columns). Gradients are 1 everywhere, then 3 everywhere: h = (1 + 9) / 2 = 5.
    # Score_c = mean over terms = (c+1)**2 * h * (3 + 1 + 1) / 3.
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.LayerNorm(2), nn.Linear(2, 1, bias=False))
    _set(model[0].weight, [[1.0], [2.0]])
    _set(model[1].weight, [1.0, 2.0])
    _set(model[2].weight, [[1.0, 2.0]])
    group = _group(model, model[0], torch.zeros(1, 3))
    ours, theirs = HessianImportance(normalizer=None), tp.importance.GroupHessianImportance(normalizer=None)
    for g in (1.0, 3.0):
        for p in model.parameters():
            p.grad = torch.full_like(p, g)
        ours.accumulate_grad(model)
        theirs.accumulate_grad(model)

    assert torch.allclose(ours(group), torch.tensor([25 / 3, 100 / 3]))
    assert torch.equal(model[0].weight.grad, torch.full((2, 3), 3.0))  # untouched
    # TP kept only the last sample (h = 9) and wrote it into p.grad.
    assert torch.allclose(theirs(group), torch.tensor([15.0, 60.0]))
    assert torch.equal(model[0].weight.grad, torch.full((2, 3), 9.0))


def test_hessian_scores_batchnorm_bias():
    # Conv-BN, every weight and gradient 1 except BN bias = [1, 2]: h = 1, terms are
    # conv 1, BN scale 1, BN bias b**2 -> sums [3, 6]. TP's inverted test drops the bias term.
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
    for p in model.parameters():
        _set(p, 1.0, grad=1.0)
    _set(model[1].bias, [1.0, 2.0])
    group = _group(model, model[0], IMG)
    kwargs = dict(group_reduction="sum", normalizer=None, bias=True)
    ours, theirs = HessianImportance(**kwargs), tp.importance.GroupHessianImportance(**kwargs)
    ours.accumulate_grad(model)
    theirs.accumulate_grad(model)

    assert torch.allclose(ours(group), torch.tensor([3.0, 6.0]))
    assert torch.allclose(theirs(group), torch.tensor([2.0, 2.0]))


def test_hessian_without_accumulated_gradients_says_how_to_fix():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.raises(RuntimeError, match="accumulate_grad"):
        HessianImportance()(_group(model, model[0], IMG))


# ---------------------------------------------------------------- Taylor


def test_taylor_counts_batchnorm():
    # Group of the first conv: its outputs |1*1| = [1, 1], BN1 scales |w*dw| = |[1,3]*[2,1]| = [2, 3],
    # second conv's inputs (two outputs of 1*1 each) = [2, 2]. Mean over the three: [5/3, 2],
    # divided by their mean 11/6: [10/11, 12/11]. TP skips the BN term: [1.5, 1.5] -> [1, 1].
    model = _conv_bn_conv_bn()
    for p in model.parameters():
        _set(p, 1.0, grad=1.0)
    _set(model[1].weight, [1.0, 3.0], grad=[2.0, 1.0])
    group = _group(model, model[0], IMG)

    assert torch.allclose(TaylorImportance()(group), torch.tensor([10 / 11, 12 / 11]))
    assert torch.allclose(tp.importance.GroupTaylorImportance()(group), torch.tensor([1.0, 1.0]))


def test_taylor_counts_depthwise_convs():
    # Conv(1->2) then a 1x1 depthwise conv: [1, 1] from the conv, |[1,1]*[1,4]| from the depthwise.
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 2, 1, groups=2, bias=False))
    _set(model[0].weight, 1.0, grad=1.0)
    _set(model[1].weight, 1.0, grad=[[[[1.0]]], [[[4.0]]]])
    group = _group(model, model[0], IMG)
    kwargs = dict(normalizer=None)

    assert torch.allclose(TaylorImportance(**kwargs)(group), torch.tensor([1.0, 2.5]))
    assert torch.allclose(tp.importance.GroupTaylorImportance(**kwargs)(group), torch.tensor([1.0, 1.0]))


def test_taylor_maps_grouped_conv_inputs_to_their_own_filters():
    # Conv(1->4) feeds Conv(4->4, groups=2): input j belongs to group j // 2 and meets only that
    # group's 2 filters, at position j % 2. Weights w[o, pos] = 1 + o + 4 * pos, gradients 1.
    model = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.Conv2d(4, 4, 1, groups=2, bias=False))
    _set(model[0].weight, 0.0, grad=0.0)  # only the grouped conv's inputs score
    w = torch.tensor([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]])
    _set(model[1].weight, w[..., None, None], grad=1.0)
    group = _group(model, model[0], IMG)
    kwargs = dict(group_reduction="sum", normalizer=None)

    expected = torch.tensor([1 + 2, 5 + 6, 3 + 4, 7 + 8.0])
    assert torch.allclose(TaylorImportance(**kwargs)(group), expected)
    tp_expected = torch.tensor([1 + 2 + 3 + 4, 5 + 6 + 7 + 8.0]).repeat(2)  # TP's per-group repeat
    assert torch.allclose(tp.importance.GroupTaylorImportance(**kwargs)(group), tp_expected)


class _Mixed(nn.Module):
    """Conv, transposed conv, flatten into Linear, LayerNorm, Linear: every case TP scores right."""

    def __init__(self):
        super().__init__()
        self.conv, self.up = nn.Conv2d(1, 3, 2), nn.ConvTranspose2d(3, 2, 2)
        self.fc, self.ln, self.out = nn.Linear(2 * 2 * 2, 4), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.ln(self.fc(self.up(self.conv(x)).flatten(1))))


@pytest.mark.parametrize("kwargs", [{}, {"group_reduction": "max", "normalizer": None, "bias": True},
                                    {"group_reduction": "sum", "normalizer": "max"}])
def test_importances_match_tp_where_tp_is_right(kwargs):
    # Same numbers as TP on layers it handles; for Hessian, one accumulated gradient (no average).
    torch.manual_seed(0)
    model, example = _Mixed(), torch.randn(2, 1, 2, 2)
    groups = list(tp.DependencyGraph().build_dependency(model, example_inputs=example).get_all_groups())
    model(example).pow(2).sum().backward()
    ours, theirs = TaylorImportance(**kwargs), tp.importance.GroupTaylorImportance(**kwargs)
    for group in groups:
        assert torch.allclose(ours(group), theirs(group), rtol=1e-5)

    ours = HessianImportance(**kwargs)
    ours.accumulate_grad(model)
    grads = [p.grad.clone() for p in model.parameters()]
    for group in groups:
        theirs = tp.importance.GroupHessianImportance(**kwargs)
        theirs.accumulate_grad(model)
        want = theirs(group)
        for p, g in zip(model.parameters(), grads):  # TP wrote g**2 into p.grad
            p.grad = g.clone()
        assert torch.allclose(ours(group), want, rtol=1e-5)


# ---------------------------------------------------------------- GrowingReg


def _growing_reg_pair(pruner_cls, bias):
    """Regularize a Conv-BN-ReLU-Conv-BN with per-channel gamma [0.5, 2]; return model, BN grad."""
    model = _conv_bn_conv_bn()
    _set(model[0].weight, [[[[1.0]]], [[[-2.0]]]])
    _set(model[1].weight, [3.0, -4.0])
    _set(model[1].bias, [5.0, 6.0])
    _set(model[3].weight, 1.0)
    pruner = pruner_cls(model, IMG, tp.importance.MagnitudeImportance(), reg=1.0)
    for group in pruner._groups:
        pruner.group_reg[group] = torch.tensor([0.5, 2.0])
    _zero_grads(model)
    pruner.regularize(model, bias=bias)
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_growing_reg_regularizes_batchnorm(bias):
    ours = _growing_reg_pair(GrowingRegPruner, bias)
    theirs = _growing_reg_pair(tp.pruner.GrowingRegPruner, bias)

    gamma = torch.tensor([0.5, 2.0])
    assert torch.allclose(ours[1].weight.grad, gamma * torch.tensor([3.0, -4.0]))
    assert torch.equal(theirs[1].weight.grad, torch.zeros(2))  # TP added into a copy
    expected_bias = gamma * torch.tensor([5.0, 6.0]) if bias else torch.zeros(2)
    assert torch.allclose(ours[1].bias.grad, expected_bias)
    # Conv terms are the parent's, and right: the second conv gets gamma[out] + gamma[in] times w = 1.
    assert torch.allclose(ours[0].weight.grad.flatten(), torch.tensor([0.5, -4.0]))
    assert torch.allclose(ours[3].weight.grad.flatten(), torch.tensor([1.0, 2.5, 2.5, 4.0]))
    for i in (0, 3):
        assert torch.equal(ours[i].weight.grad, theirs[i].weight.grad)


class _FixedTPGrowingReg(tp.pruner.GrowingRegPruner):
    """Stands in for a future TP whose regularize does add the BatchNorm term."""

    def regularize(self, model, bias=False):
        super().regularize(model, bias=bias)
        for group in self._groups:
            for item in group:
                if isinstance(item.dep.layer, nn.BatchNorm2d):
                    w = item.dep.layer.weight
                    w.grad += self.group_reg[group][item.root_idxs] * w.detach()[item.idxs]


def test_growing_reg_does_not_double_count_when_parent_is_fixed():
    class OnFixedTP(GrowingRegPruner, _FixedTPGrowingReg):
        pass

    model = _growing_reg_pair(OnFixedTP, bias=False)
    assert torch.allclose(model[1].weight.grad, torch.tensor([0.5 * 3.0, 2.0 * -4.0]))


# ---------------------------------------------------------------- BNScale


def test_bnscale_l1_adds_reg_times_sign():
    # TP's L1 path is correct; ours delegates to it.
    for cls in (tp.pruner.BNScalePruner, BNScalePruner):
        model = _conv_bn_conv_bn()
        _set(model[1].weight, [0.5, -2.0])
        _set(model[4].weight, [-1.0, 3.0])
        pruner = cls(model, IMG, tp.importance.MagnitudeImportance(), reg=0.1)
        for p in model.parameters():
            p.grad = torch.full_like(p, 7.0)
        pruner.regularize(model)
        assert torch.allclose(model[1].weight.grad, torch.tensor([7.1, 6.9]))
        assert torch.allclose(model[4].weight.grad, torch.tensor([6.9, 7.1]))
        assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))


def _lasso_residual(cls, ignore_head):
    model = _Residual()
    _set(model.bn_a.weight, [3.0, 1.0])
    _set(model.bn_b.weight, [4.0, -1.0])
    pruner = cls(model, IMG, tp.importance.MagnitudeImportance(), reg=0.5, group_lasso=True,
                 ignored_layers=[model.head] if ignore_head else None)
    _zero_grads(model)
    pruner.regularize(model)
    return model


def test_bnscale_group_lasso_scales_by_group_norm():
    # Both BNs share a group: rms over them = sqrt((9+16)/2), sqrt((1+1)/2) = [sqrt(12.5), 1].
    # grad += reg * w / rms. Ours needs no help; TP agrees once the BN-less head is ignored.
    rms = torch.tensor([12.5 ** 0.5, 1.0])
    for model in (_lasso_residual(BNScalePruner, False), _lasso_residual(tp.pruner.BNScalePruner, True)):
        assert torch.allclose(model.bn_a.weight.grad, 0.5 * torch.tensor([3.0, 1.0]) / rms)
        assert torch.allclose(model.bn_b.weight.grad, 0.5 * torch.tensor([4.0, -1.0]) / rms)

    with pytest.raises(TypeError):  # TP: the head's group has no BN
        _lasso_residual(tp.pruner.BNScalePruner, False)


def test_bnscale_group_lasso_touches_only_its_slice_of_a_shared_bn():
    # BN channels 0,1 belong to conv a's group, 2,3 to conv b's; each BN is alone in its group,
    # so grad += reg * w / |w| = reg * sign(w) on exactly its own channels.
    def run(cls):
        model = _Concat()
        _set(model.bn.weight, [2.0, -1.0, 4.0, -8.0])
        pruner = cls(model, IMG, tp.importance.MagnitudeImportance(), reg=0.5, group_lasso=True,
                     ignored_layers=[model.head])
        _zero_grads(model)
        pruner.regularize(model)
        return model.bn.weight.grad

    assert torch.allclose(run(BNScalePruner), torch.tensor([0.5, -0.5, 0.5, -0.5]))
    with pytest.raises(RuntimeError, match="size"):
        run(tp.pruner.BNScalePruner)


# ---------------------------------------------------------------- GroupNorm


def _group_norm_grads(cls, **kwargs):
    """Regularize Conv-BN-ReLU-Conv-BN whose first group has channel 0 weak and channel 1 strong."""
    model = _conv_bn_conv_bn()
    _set(model[0].weight, [[[[1.0]]], [[[2.0]]]])
    _set(model[1].weight, [1.0, 2.0])
    _set(model[3].weight, [[[[1.0]], [[2.0]]], [[[1.0]], [[2.0]]]])
    pruner = cls(model, IMG, tp.importance.MagnitudeImportance(), reg=0.1, **kwargs)
    _zero_grads(model)
    pruner.regularize(model)
    return model[0].weight.grad.flatten(), model[1].weight.grad


@pytest.mark.parametrize("cls, kwargs, top", [
    (tp.pruner.GroupNormPruner, {}, 16.0),  # TP is right at its default alpha...
    (GroupNormPruner, {}, 16.0),
    (GroupNormPruner, {"alpha": 2}, 4.0),
    (tp.pruner.GroupNormPruner, {"alpha": 2}, 16.0),  # ...and ignores any other
])
def test_group_norm_penalty_spans_one_to_two_to_the_alpha(cls, kwargs, top):
    # grad += reg * gamma * w, gamma = 1 for the strongest channel and 2**alpha for the weakest.
    conv, bn = _group_norm_grads(cls, **kwargs)
    assert torch.allclose(conv, 0.1 * torch.tensor([top * 1.0, 2.0]))
    assert torch.allclose(bn, 0.1 * torch.tensor([top * 1.0, 2.0]))


def test_group_norm_skips_flat_groups_instead_of_writing_nan():
    def run(cls):
        model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Conv2d(2, 1, 1))
        for p in model.parameters():
            _set(p, 1.0)  # every channel of the first group equally important; the head has one
        pruner = cls(model, IMG, tp.importance.MagnitudeImportance(), reg=0.1)
        _zero_grads(model)
        pruner.regularize(model)
        return [p.grad for p in model.parameters()]

    assert all(torch.equal(g, torch.zeros_like(g)) for g in run(GroupNormPruner))
    assert any(torch.isnan(g).any() for g in run(tp.pruner.GroupNormPruner))
