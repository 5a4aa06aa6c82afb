"""The transformers RT-DETR family on tiny models built from configs: loading, frozen BatchNorms, counting,
what `check` keeps and why, whole-head pruning, the safe format, transformers' post-processing, ONNX, and
the Ultralytics contract the trainers and validator use. Nothing is downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ, fake_batch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from rtdetr_prune.bench import onnx as bench_onnx  # noqa: E402
from rtdetr_prune.errors import UserError  # noqa: E402
from rtdetr_prune.measure import counts  # noqa: E402
from rtdetr_prune.models import family_of, get_family, load_model, zoo_names  # noqa: E402
from rtdetr_prune.models.transformers.adapter import EncoderRegion, TransformersAdapter  # noqa: E402
from rtdetr_prune.models.transformers.view import DetectionView  # noqa: E402
from rtdetr_prune.models.transformers.zoo import thaw_batchnorms  # noqa: E402
from rtdetr_prune.pruning.analysis import analyse, check_model  # noqa: E402
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target  # noqa: E402
from rtdetr_prune.pruning.graph import trace  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402
from rtdetr_prune.pruning.units import group_units  # noqa: E402

QUERIES = 30  # hf-rtdetr-tiny's num_queries
V_PROJ = "model.encoder.aifi.0.layers.0.self_attn.v_proj"  # root of the AIFI heads' group (q, k, v rows, o columns)
FC2 = "model.encoder.aifi.0.layers.0.mlp.fc2"  # root of AIFI's embedding-width group


def lively(model, seed: int = 0, imgsz: int = IMGSZ):
    """Random weights under which the features depend on the image, as a trained model's do.

    transformers initializes RT-DETR's convs and linears at N(0, 0.01) and the encoder's BatchNorm scales at
    N(0, 0.01): every layer shrinks the signal, and the decoder's inputs barely vary over the image (a wrong
    removal hides in them; every anchor ties in the query selection). So: PyTorch's own initialization for the
    convs and the encoder's linears, BatchNorm statistics of a batch of random images with scales in [0.5, 1.5]
    and small shifts, and no bias before the encoder's score head (the border anchors, masked to zero
    features, then score the prior, below the rest).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    encoder_linears = {m for m in model.model.encoder.modules() if isinstance(m, torch.nn.Linear)}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) or m in encoder_linears:
                m.reset_parameters()
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative: after one batch, exactly its statistics
        model.model.enc_output[0].bias.zero_()
        model.train()(pixel_values=torch.rand(4, 3, imgsz, imgsz, generator=g))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def hf_tiny():
    torch.manual_seed(0)
    return lively(load_model("hf-rtdetr-tiny", nc=3))


@pytest.fixture(scope="module")
def hf_pruned(hf_tiny):
    return prune_to_target(hf_tiny, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ))


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def _attention(model):
    return model.model.encoder.aifi[0].layers[0].self_attn


def test_zoo_names_configs_and_folders_load(hf_tiny, tmp_path):
    assert {"hf-rtdetr-r18vd", "hf-rtdetr-v2-r18vd"} <= set(zoo_names())
    assert type(hf_tiny).__name__ == "RTDetrForObjectDetection" and family_of(hf_tiny).name == "transformers"
    assert family_of(hf_tiny).num_classes(hf_tiny) == 3
    hf_tiny.save_pretrained(tmp_path / "hf")
    again = load_model(tmp_path / "hf")  # config.json + model.safetensors, as transformers saves them
    x = _images()
    with torch.no_grad():
        assert torch.equal(hf_tiny(pixel_values=x).logits, again(pixel_values=x).logits)
    hf_tiny.config.save_pretrained(tmp_path / "config-only")
    built = load_model(tmp_path / "config-only", nc=5)  # a config without weights: random weights, nc applies
    assert built.config.num_labels == 5 and built.model.decoder.class_embed[0].out_features == 5
    assert load_model(tmp_path / "config-only" / "config.json").config.num_labels == 3
    assert not get_family("ultralytics").recognizes(str(tmp_path / "hf"))  # Ultralytics leaves these alone


def test_a_config_of_another_model_is_refused_clearly(tmp_path):
    (tmp_path / "detr").mkdir()
    (tmp_path / "detr" / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(UserError, match="not RT-DETR"):
        load_model(tmp_path / "detr")


def test_frozen_batchnorms_become_trainable_with_the_same_outputs():
    config = transformers.RTDetrConfig.from_dict(dict(load_model("hf-rtdetr-tiny", nc=3).config.to_dict(),
                                                      freeze_backbone_batch_norms=True))
    torch.manual_seed(0)
    frozen = transformers.RTDetrForObjectDetection(config).eval()
    assert any(type(m).__name__ == "RTDetrFrozenBatchNorm2d" for m in frozen.modules())
    with torch.no_grad():
        for m in frozen.modules():  # statistics a trained model would have
            if type(m).__name__ == "RTDetrFrozenBatchNorm2d":
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    thawed = thaw_batchnorms(copy.deepcopy(frozen))
    assert not any(type(m).__name__.endswith("FrozenBatchNorm2d") for m in thawed.modules())
    assert thawed.config.freeze_backbone_batch_norms is False
    x = _images()
    with torch.no_grad():
        a, b = EncoderRegion(frozen)(x), EncoderRegion(thawed)(x)
    assert max(float((p - q).abs().max()) for p, q in zip(a, b)) < 1e-5
    stem_bn = thawed.model.backbone.model.embedder.embedder[0].normalization
    thawed.train()(pixel_values=x).logits.sum().backward()
    assert isinstance(stem_bn, torch.nn.BatchNorm2d) and stem_bn.weight.grad is not None  # trainable now


def test_fused_copy_folds_every_batchnorm_and_keeps_the_outputs(hf_tiny):
    fused = counts.fused(hf_tiny)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = _images()
    with torch.no_grad():
        a, b = EncoderRegion(hf_tiny.eval())(x), EncoderRegion(fused)(x)
    assert max(float((p - q).abs().max() / p.abs().max()) for p, q in zip(a, b)) < 1e-4  # float32 rounding
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in hf_tiny.parameters())


def test_gflops_of_one_attention_head_match_a_hand_count(hf_tiny):
    """Removing one AIFI head saves, in multiply-adds: q, k, v rows (3 L C d), o columns (L d C) and the
    head's q.k and attention.v products (2 L^2 d), with L tokens at stride 32, C the width, d head_dim."""
    model = copy.deepcopy(hf_tiny)
    attn = _attention(model)
    before = counts.gflops(model, IMGSZ)
    d, width = attn.head_dim, attn.q_proj.in_features
    trace(model).prune({V_PROJ: list(range(d))})
    assert attn.q_proj.out_features == attn.k_proj.out_features == attn.v_proj.out_features == width - d
    tokens = (IMGSZ // 32) ** 2
    saved = 2 * (4 * tokens * width * d + 2 * tokens**2 * d) / 1e9
    assert before - counts.gflops(model, IMGSZ) == pytest.approx(saved, rel=1e-9)


def test_check_prunes_heads_and_keeps_the_embedding_width(hf_tiny):
    plan = analyse(hf_tiny, 16)
    assert V_PROJ in plan.prunable
    assert {s.layer: s.kind for s in plan.skipped}[FC2] == "rtdetr"
    report = check_model(hf_tiny, imgsz=IMGSZ, plan=plan)
    assert report["prunable"] and report["max_speed_up"] > 1.5 and report["share"]["prunable"] > 0.5
    assert [p["layer"] for p in report["protected"]] == ["model.decoder"]


@pytest.mark.parametrize("option", [{"decoder_parts": "memory,ffn"}, {"decoder_layers": 2}])
def test_decoder_options_are_refused_not_ignored(hf_tiny, option):
    """The decoder options are Ultralytics-only so far: asking for them here must stop with a way out."""
    with pytest.raises(UserError, match="transformers models .*(--decoder-parts none|leave it at 0)"):
        check_model(hf_tiny, imgsz=IMGSZ, **option)
    with pytest.raises(UserError, match="transformers models"):
        prune_to_target(hf_tiny, get_method("l1"), PruneOptions(speed_up=1.2, imgsz=IMGSZ, **option))


def test_auto_decoder_parts_keep_this_familys_decoder_whole(hf_tiny):
    from rtdetr_prune.pruning.analysis.parts import resolve_parts

    assert resolve_parts(hf_tiny, "auto") == "none"
    assert check_model(hf_tiny, imgsz=IMGSZ, decoder_parts="auto")["protected"][0]["layer"] == "model.decoder"


def test_the_trial_refuses_heads_cut_across(hf_tiny, monkeypatch):
    """Were channels removed singly, the rest would be regrouped into other heads: the zeroed-channel trial
    must catch it (it runs the model with the channels removed), so whole heads are not a mere convention."""
    monkeypatch.setattr(TransformersAdapter, "channel_block", lambda self, modules: 1)
    skipped = {s.layer: s.kind for s in analyse(hf_tiny, 8).skipped}
    assert skipped.get(V_PROJ) in {"breaks", "changes-outputs"}


def test_head_units_are_whole_aligned_heads_least_important_first():
    scores = torch.tensor([5.0] * 4 + [1.0] * 4 + [3.0] * 4 + [2.0] * 4)  # 4 heads of 4 channels
    units = group_units("attn", scores, 16, 16, unit=6, max_ratio=0.8, block=4)  # 6 channels: 2 heads per unit
    assert [u.idxs for u in units] == [tuple(range(4, 8)) + tuple(range(12, 16))]  # heads 1 and 3; 2 heads stay
    assert group_units("attn", scores, 16, 16, unit=4, max_ratio=0.5, block=4)[-1].idxs == tuple(range(12, 16))


def test_pruning_removes_whole_heads_and_the_safe_copy_reloads_identical(hf_pruned, tmp_path):
    pruned = hf_pruned.model
    assert 1.5 <= hf_pruned.speed_up <= 1.545, hf_pruned.message
    attn = _attention(pruned)
    heads = attn.q_proj.out_features // attn.head_dim
    assert attn.q_proj.out_features % attn.head_dim == 0 and heads == TransformersAdapter(pruned).heads()[0] < 4
    family_of(pruned).save_safe(pruned, tmp_path / "safe")
    loaded = load_model(tmp_path / "safe")
    assert type(loaded) is transformers.RTDetrForObjectDetection
    assert _attention(loaded).q_proj.out_features == attn.q_proj.out_features  # pruned widths, not the config's
    x = _images()
    with torch.no_grad():
        a, b = pruned.eval()(pixel_values=x), loaded(pixel_values=x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)
    found = transformers.RTDetrImageProcessor().post_process_object_detection(
        b, threshold=0.0, target_sizes=[(IMGSZ, 2 * IMGSZ)] * 2)
    assert len(found) == 2 and found[0]["boxes"].shape == (QUERIES, 4) and found[0]["labels"].max() < 3


def test_save_pretrained_of_a_pruned_model_is_refused_not_regrown(hf_pruned, tmp_path):
    hf_pruned.model.save_pretrained(tmp_path / "hf")  # its config still describes the unpruned widths
    with pytest.raises(UserError, match="do not fit its config"):
        load_model(tmp_path / "hf")


def test_gradient_methods_score_with_transformers_loss(hf_tiny):
    batches = lambda: iter([fake_batch(nc=3, batch=1, imgsz=IMGSZ, seed=i) for i in range(2)])  # noqa: E731
    options = PruneOptions(speed_up=1.3, imgsz=IMGSZ, grad_batches=2)
    result = prune_to_target(hf_tiny, get_method("group_taylor"), options, batches=batches)
    assert 1.3 <= result.speed_up <= 1.3 * 1.03, result.message


def test_onnx_export_matches_pytorch(hf_pruned, tmp_path):
    fused = counts.fused(hf_pruned.model)
    x = _images()

    def check(model):
        path = bench_onnx.export(family_of(model).export_module(model), x, tmp_path / "m.onnx")
        view = family_of(fused).export_module(fused)
        return bench_onnx.check_outputs(bench_onnx.session(path, torch.device("cpu"), 1), view, x, 1e-3)

    clean = check(copy.deepcopy(fused))
    assert clean.max_abs_diff <= 1e-4 and clean.tied_images == 0  # no tie: the decoder's outputs were compared too
    broken = copy.deepcopy(fused)
    with torch.no_grad():
        broken.model.decoder_input_proj[0][0].bias += 1.0  # the last layer pruning changes (BatchNorm folded in)
    assert check(broken).max_abs_diff >= 0.5


def test_detection_view_gives_ultralytics_its_contract(hf_tiny):
    view = DetectionView(copy.deepcopy(hf_tiny)).eval()
    with torch.no_grad():
        det = view(_images())
    assert det.shape == (2, QUERIES, 6)
    assert ((det[..., 4] >= 0) & (det[..., 4] <= 1)).all() and det[..., 5].max() < 3
    assert (det[..., 4][:, :-1] >= det[..., 4][:, 1:]).all()  # best first
    view.train()
    loss, items = view(fake_batch(nc=3, imgsz=IMGSZ))
    assert torch.isfinite(loss) and set(items) == {"giou_loss", "cls_loss", "l1_loss"}
    loss.backward()
    attn, stem_bn = _attention(view.hf), view.hf.model.backbone.model.embedder.embedder[0].normalization
    assert attn.q_proj.weight.grad is not None and stem_bn.weight.grad is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in view.fuse().modules())


def test_map_through_ultralytics_validator(hf_tiny, data_yaml, tmp_path):
    m50, m5095 = family_of(hf_tiny).val_map(hf_tiny, data_yaml, IMGSZ, 4, "cpu", 0, tmp_path / "val")
    assert 0.0 <= m5095 <= m50 <= 1.0


def test_rtdetr_v2_prunes_to_2x_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = lively(load_model("hf-rtdetr-v2-tiny", nc=3))
    result = prune_to_target(model, get_method("lamp"), PruneOptions(speed_up=2.0, imgsz=IMGSZ, round_to=8))
    assert 2.0 <= result.speed_up <= 2.06, result.message
    family_of(result.model).save_safe(result.model, tmp_path / "safe")
    loaded = load_model(tmp_path / "safe")
    assert type(loaded) is transformers.RTDetrV2ForObjectDetection
    x = _images()
    with torch.no_grad():
        assert torch.equal(result.model.eval()(pixel_values=x).logits, loaded(pixel_values=x).logits)


def test_an_hgnetv2_backbone_prunes_and_reloads(tmp_path):
    """transformers builds RT-DETR with any backbone config; HGNetV2's (depthwise light blocks) prunes too."""
    from rtdetr_prune.models.transformers.zoo import ZOO, from_config

    backbone = dict(model_type="hgnet_v2", stem_channels=[3, 16, 16], stage_in_channels=[16, 32, 64, 128],
                    stage_mid_channels=[16, 16, 32, 32], stage_out_channels=[32, 64, 128, 128],
                    stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[2, 2, 2, 2], hidden_sizes=[32, 64, 128, 128],
                    depths=[1, 1, 1, 1], out_indices=[2, 3, 4], embedding_size=16)
    values = dict(ZOO["hf-rtdetr-tiny"][1], backbone_config=backbone, encoder_in_channels=[64, 128, 128])
    model = lively(from_config("rt_detr", values, 3))
    assert type(model.model.backbone.model).__name__ == "HGNetV2Backbone"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in counts.fused(model).modules())
    result = prune_to_target(model, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ, round_to=8))
    assert 1.5 <= result.speed_up <= 1.545, result.message
    family_of(result.model).save_safe(result.model, tmp_path / "safe")
    x, loaded = _images(), load_model(tmp_path / "safe")
    with torch.no_grad():
        assert torch.equal(result.model.eval()(pixel_values=x).logits, loaded(pixel_values=x).logits)


@pytest.mark.slow
def test_prune_and_finetune_a_transformers_folder_end_to_end(hf_tiny, data_yaml, tmp_path):
    import rtdetr_prune

    hf_tiny.save_pretrained(tmp_path / "hf-tiny")
    report = rtdetr_prune.prune(model=str(tmp_path / "hf-tiny"), data=data_yaml, method="lamp", speed_up=1.5,
                                epochs=1, imgsz=IMGSZ, batch=4, workers=0, project=str(tmp_path / "runs"),
                                latency=False, device="cpu")
    assert all(report[k]["map50_95"] is not None for k in ("baseline", "pruned", "finetuned"))
    assert report["pruned"]["params"] == report["finetuned"]["params"] < report["baseline"]["params"]
    state = json.loads((tmp_path / "runs" / "exp" / "state.json").read_text())
    finetuned = load_model(state["finetuned"]["checkpoint"])
    assert type(finetuned) is transformers.RTDetrForObjectDetection


@pytest.mark.slow
def test_sparse_training_runs_through_the_view(hf_tiny, data_yaml, tmp_path):
    import rtdetr_prune

    hf_tiny.save_pretrained(tmp_path / "hf-tiny")
    report = rtdetr_prune.prune(model=str(tmp_path / "hf-tiny"), data=data_yaml, method="slim", speed_up=1.5,
                                sparse_epochs=1, epochs=0, imgsz=IMGSZ, batch=4, workers=0, sensitivity=0,
                                project=str(tmp_path / "runs"), latency=False, device="cpu")
    run = tmp_path / "runs" / "exp"
    assert (run / "sparse" / "sparsity.csv").is_file() and (run / "sparse" / "weights" / "best_safe").is_dir()
    assert 1.5 <= report["speed_up_achieved"] <= 1.545


@pytest.mark.slow
def test_acceptance_benchmark_runs_on_the_tiny_model(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import transformers_acceptance

    transformers_acceptance.main(["--models", "hf-rtdetr-tiny", "--methods", "lamp", "--imgsz", str(IMGSZ),
                                  "--threads", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "transformers_acceptance.json").read_text())["results"][0]["methods"]["lamp"]
    assert result["within_3pct"] and result["reload_max_abs_diff"] == 0.0 and result["onnx_max_abs_diff"] <= 1e-3
    assert (tmp_path / "transformers_acceptance.md").is_file()


def _teacher(hf_tiny, tmp_path):
    """hf_tiny as a teacher checkpoint, with a box head that is not zero (transformers starts it at zero)."""
    from rtdetr_prune.models.transformers.trainer import save_checkpoint

    teacher = copy.deepcopy(hf_tiny)
    with torch.no_grad():
        last = teacher.model.enc_bbox_head.layers[-1]
        last.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    return teacher, save_checkpoint(teacher, tmp_path / "teacher.pt")


def test_distillation_is_zero_for_the_teacher_itself_and_its_gradients_reach_the_student_only(hf_tiny, tmp_path):
    from rtdetr_prune.models.transformers.distiller import TransformersDistiller
    from rtdetr_prune.train.distill import DistillOptions

    teacher, path = _teacher(hf_tiny, tmp_path)
    batch = fake_batch()
    same = DetectionView(copy.deepcopy(teacher).eval())
    distiller = TransformersDistiller(path, DistillOptions())
    distiller.attach(same)
    try:
        same.loss(batch)  # the student's forward, which the hooks record (and which adds the terms to its loss)
        terms = distiller.terms(batch["img"])
    finally:
        distiller.detach()
    assert set(terms) == {"loss_kd_feat", "loss_kd_cls", "loss_kd_box"}
    assert all(abs(float(v.detach())) < 1e-6 for v in terms.values()), terms
    assert same.distill is None and not same.hf.model.enc_score_head._forward_hooks  # detached cleanly

    pruned = prune_to_target(teacher, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model
    student = DetectionView(pruned.train())
    distiller.attach(student)
    try:
        _, items = student.loss(batch)
        terms = distiller.terms(batch["img"])
        assert all(float(v) > 0 for v in terms.values()), terms  # a pruned student differs from its teacher
        sum(terms.values()).backward()
        assert all(not p.requires_grad and p.grad is None for p in distiller.teacher.parameters())
        proj = student.hf.model.decoder_input_proj[0][0].weight  # every term reaches the projections' inputs
        assert proj.grad is not None and proj.grad.abs().sum() > 0
        assert set(items) == {"giou_loss", "cls_loss", "l1_loss"}  # Ultralytics logs the detection terms only
    finally:
        distiller.detach()


def test_prune_distills_a_transformers_model_and_keeps_the_teacher_out_of_checkpoints(data_yaml, tmp_path):
    import rtdetr_prune

    report = rtdetr_prune.prune(model="hf-rtdetr-tiny", data=str(data_yaml), method="l1", speed_up=1.2,
                                imgsz=IMGSZ, batch=8, workers=0, round_to=8, epochs=1, distill=True, latency=False,
                                project=str(tmp_path / "runs"), name="kd", sensitivity=0)
    run = Path(report["run_dir"])
    assert report["finetuned"]["gflops"] == report["pruned"]["gflops"] < report["baseline"]["gflops"]
    (last,) = [p for p in run.rglob("last.pt") if "finetune" in str(p)]
    saved = torch.load(last, map_location="cpu", weights_only=False)
    kept = saved["ema"] or saved["model"]
    assert isinstance(kept, DetectionView) and kept.distill is None  # the teacher is never pickled with the student
