"""Decoder pruning: each part removes exactly the channels it says (silenced channels -> same outputs), value
widths stay equal per head, and a decoder-pruned model survives save/reload, ONNX export and dropped layers."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ
from torch import nn

from rtdetr_prune.bench import onnx as bench_onnx
from rtdetr_prune.errors import UserError
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.models.ultralytics.checkpoint import load_pt, save_checkpoint
from rtdetr_prune.models.ultralytics.decoder import keep_layers
from rtdetr_prune.models.ultralytics.safe import load_safe, save_safe
from rtdetr_prune.models.ultralytics.zoo import ZOO
from rtdetr_prune.pruning.analysis.check import check_model
from rtdetr_prune.pruning.analysis.parts import part_keys, resolve_parts, restrict
from rtdetr_prune.pruning.analysis.prunable import analyse
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.graph import trace
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.pruning.units import group_units
from rtdetr_prune.recipe import DECODER_PARTS, Recipe


@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(0)
    return analyse(load_model("rtdetr-tiny", nc=3), unit=8)


def _outputs(model, x) -> list[torch.Tensor]:
    """Detections, then the decoder's raw outputs (boxes and logits, encoder boxes and logits), eval mode."""
    with torch.no_grad():
        y, raw = model.eval()(x)
    return [y, *raw[:4]]


def _change(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max() / p.abs().max()) for p, q in zip(a, b))


@torch.no_grad()
def _silence(graph, group, roots: list[int]) -> None:
    """Make the given root channels exactly zero wherever they are written (linear/conv rows and biases,
    BatchNorm shift and mean), so that removing them can change nothing downstream."""
    for item in group:
        m, handler = item.dep.target.module, item.dep.handler
        if not graph.DG.is_out_channel_pruning_fn(handler):
            continue
        sel = torch.tensor([i for i, r in zip(item.idxs, item.root_idxs) if r in roots], dtype=torch.long)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight[sel] = 0
            if m.bias is not None:
                m.bias[sel] = 0
        elif isinstance(m, nn.BatchNorm2d):
            m.bias[sel] = 0
            m.running_mean[sel] = 0


@pytest.mark.parametrize("part", DECODER_PARTS)
def test_removing_silenced_decoder_channels_keeps_outputs(tiny, plan, part):
    keys = part_keys(plan, part)
    assert keys and all(k in plan.prunable for k in keys), f"{part}: {keys} not all prunable"
    graph = trace(tiny)
    chosen = {}
    for group in graph.all_groups():
        key = graph.key(group)
        if key in keys:
            out = graph.out_modules(group)
            width = graph.root_width(group)
            units = group_units(key, torch.rand(width), width, width, 8, 0.8,
                                heads=graph.adapter.channel_heads(out))
            chosen[key] = list(units[0].idxs)
            _silence(graph, group, chosen[key])
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    before = _outputs(tiny, x)
    params = sum(p.numel() for p in tiny.parameters())
    graph.prune(chosen)
    assert sum(p.numel() for p in tiny.parameters()) < params  # the channels are really gone
    assert _change(before, _outputs(tiny, x)) <= 1e-5


def test_value_width_goes_equally_from_every_head(tiny):
    units = group_units("v", torch.rand(64), 64, 64, 8, 0.8, heads=4)
    assert len(units) == 6  # 16 channels per head, at least 4 kept: 2 per head per unit
    for u in units:
        assert [sum(1 for i in u.idxs if i // 16 == h) for h in range(4)] == [2, 2, 2, 2]
    assert len({i for u in units for i in u.idxs}) == 48  # no channel twice


def test_uneven_head_removal_would_change_outputs(tiny):
    """The reason for equal heads: four value channels taken from one head regroup every head's channels."""
    graph = trace(tiny)
    key = "model.22.decoder.layers.0.cross_attn.value_proj"
    group = next(g for g in graph.all_groups() if graph.key(g) == key)
    _silence(graph, group, [0, 1, 2, 3])  # all from head 0 (4 heads of 16)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    before = _outputs(tiny, x)
    graph.prune({key: [0, 1, 2, 3]})
    assert tiny.model[-1].decoder.layers[0].cross_attn.d_model == 60
    assert _change(before, _outputs(tiny, x)) > 1e-2


def test_parts_turn_off_and_check_reports_them(tiny, plan):
    off = restrict(plan, "value")
    assert set(part_keys(plan, "ffn")) <= {s.layer for s in off.skipped if s.kind == "option"}
    assert set(part_keys(plan, "value")) <= set(off.prunable)
    none = check_model(tiny, IMGSZ, 8, plan=plan, decoder_parts="none")
    every = check_model(tiny, IMGSZ, 8, plan=plan, decoder_parts=",".join(DECODER_PARTS))
    assert every["max_speed_up"] > none["max_speed_up"]
    assert all(p["enabled"] for p in every["parts"].values()) and set(every["parts"]) == set(DECODER_PARTS)
    assert not any(p["enabled"] for p in none["parts"].values())
    for part, p in none["parts"].items():  # each part, turned on alone, is predicted to reach further
        assert p["speed_up_toggled"] > none["max_speed_up"], part


def test_every_decoder_part_is_on_by_default():  # chosen by the accuracy benchmark (docs/benchmarks.md, 3f)
    assert Recipe().decoder_parts == PruneOptions().decoder_parts == "auto"


def test_auto_is_every_part_the_family_prunes(tiny, plan):
    assert resolve_parts(tiny, "auto") == ",".join(DECODER_PARTS)
    assert resolve_parts(tiny, "auto", distill_features=True) == "value,ffn,mlp", "distillation compares memory"
    assert resolve_parts(tiny, "ffn") == "ffn" and resolve_parts(tiny, "none") == "none"
    auto = check_model(tiny, IMGSZ, 8, plan=plan, decoder_parts="auto")
    assert auto == check_model(tiny, IMGSZ, 8, plan=plan, decoder_parts=",".join(DECODER_PARTS))
    assert Recipe(decoder_parts="auto", distill=True).validate(), "auto leaves memory out when distilling"
    with pytest.raises(ValueError, match="resolve"):
        restrict(plan, "auto")  # an unresolved auto must not read as "no part"


def test_bad_decoder_parts_are_user_errors():
    with pytest.raises(UserError, match="Did you mean 'ffn'"):
        Recipe(decoder_parts="memory,fnn").validate()
    with pytest.raises(UserError, match="or auto"):
        Recipe(decoder_parts="auto,ffn").validate()
    with pytest.raises(UserError, match="decoder-layers"):
        PruneOptions(decoder_layers=-1)
    assert Recipe(decoder_parts="none").validate()


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    base = load_model("rtdetr-tiny", nc=3)
    options = PruneOptions(speed_up=1.6, imgsz=IMGSZ, round_to=8, decoder_parts=",".join(DECODER_PARTS))
    return base, prune_to_target(base, get_method("l1"), options).model


def test_every_decoder_part_shrinks_and_runs(pruned):
    base, model = pruned
    b, m = base.model[-1], model.model[-1]
    attn = m.decoder.layers[0].cross_attn
    assert m.input_proj[0][0].out_channels < b.input_proj[0][0].out_channels
    assert attn.value_proj.out_features < 64 and attn.d_model == attn.value_proj.out_features
    assert attn.d_model % attn.n_heads == 0
    assert m.decoder.layers[0].linear1.out_features < b.decoder.layers[0].linear1.out_features
    assert m.enc_bbox_head.layers[0].out_features < b.enc_bbox_head.layers[0].out_features
    assert m.enc_output[0].out_features == b.enc_output[0].out_features  # the query width stays
    assert _outputs(model, torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape[-1] == 6  # detections: box, score, class


def test_decoder_pruned_model_reloads_and_exports(pruned, tmp_path):
    _, model = pruned
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    want = _outputs(model, x)
    safe = load_safe(save_safe(model, tmp_path / "safe"))
    assert _change(want, _outputs(safe, x)) <= 1e-6
    assert safe.model[-1].decoder.layers[0].cross_attn.d_model == model.model[-1].decoder.layers[0].cross_attn.d_model
    pt = load_pt(save_checkpoint(model, tmp_path / "m.pt"))
    assert _change(want, _outputs(pt, x)) <= 1e-6
    fused = family_of(model).fused(model)
    view = family_of(fused).export_module(fused)
    path = bench_onnx.export(view, x, tmp_path / "m.onnx")
    check = bench_onnx.check_outputs(bench_onnx.session(path, torch.device("cpu"), 1), view, x, 1e-3)
    assert check.max_abs_diff <= 1e-3


@pytest.fixture
def two_layers(tmp_path) -> nn.Module:
    """rtdetr-tiny with two decoder layers."""
    text = Path(ZOO["rtdetr-tiny"]).read_text().replace("[nc, 64, 30, 4, 4, 1, 128]", "[nc, 64, 30, 4, 4, 2, 128]")
    (tmp_path / "two.yaml").write_text(text)
    torch.manual_seed(0)
    return load_model(str(tmp_path / "two.yaml"), nc=3)


def test_dropping_decoder_layers_is_rtdetrs_eval_idx(two_layers, tmp_path):
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    first = copy.deepcopy(two_layers)
    first.model[-1].decoder.eval_idx = 0  # RT-DETR's own early exit: infer from layer 0
    kept = copy.deepcopy(two_layers)
    assert keep_layers(kept, 1) == 1
    head = kept.model[-1]
    assert len(head.decoder.layers) == len(head.dec_bbox_head) == len(head.dec_score_head) == 1
    assert _change(_outputs(first, x), _outputs(kept, x)) == 0
    assert family_of(kept).count(kept, IMGSZ)[1] < family_of(two_layers).count(two_layers, IMGSZ)[1]
    reloaded = load_safe(save_safe(kept, tmp_path / "safe"))  # rebuilt from the YAML: one layer
    assert len(reloaded.model[-1].decoder.layers) == 1 and _change(_outputs(kept, x), _outputs(reloaded, x)) <= 1e-6
    with pytest.raises(UserError, match="give 1 to 1"):
        keep_layers(kept, 2)


def test_engine_drops_layers_then_prunes(two_layers):
    result = prune_to_target(two_layers, get_method("l1"),
                             PruneOptions(speed_up=1.3, imgsz=IMGSZ, round_to=8, decoder_layers=1))
    assert len(result.model.model[-1].decoder.layers) == 1 and len(two_layers.model[-1].decoder.layers) == 2
    assert result.history[1]["step"] == 0 and result.history[1]["speed_up"] > 1  # the drop, before any channel
    assert result.speed_up >= 1.3
