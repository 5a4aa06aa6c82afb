"""Distillation from the unpruned model: zero for a perfect student, gradients to the student only,
and it trains inside Ultralytics' trainer without the teacher leaking into checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ, fake_batch

from rtdetr_prune.errors import UserError
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.models.ultralytics.distiller import DistillCriterion, Distiller
from rtdetr_prune.models.ultralytics.trainer import finetune
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.train.distill import DistillOptions, Points, distill_terms, feature_term


@pytest.fixture
def teacher_pt(tiny, tmp_path):
    """The tiny model as a teacher. RT-DETR starts its encoder box head at zero; give it weights, so that
    the box term has something to compare."""
    with torch.no_grad():
        last = tiny.model[-1].enc_bbox_head.layers[-1]
        last.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    return save_checkpoint(tiny, tmp_path / "teacher.pt")


def _kd_terms(student, distiller, batch) -> dict[str, torch.Tensor]:
    """The distillation terms of one loss call (the criterion adds them to the RT-DETR loss dict)."""
    distiller.attach(student)
    try:
        assert isinstance(student.criterion, DistillCriterion)
        student.loss(batch)  # the forward the hooks record
        return distiller.terms()
    finally:
        distiller.detach()


def test_zero_when_the_student_is_the_teacher(tiny, teacher_pt):
    student = copy.deepcopy(tiny).eval()  # eval: same BatchNorm statistics as the (eval-mode) teacher
    terms = _kd_terms(student, Distiller(teacher_pt, DistillOptions()), fake_batch())
    assert set(terms) == {"loss_kd_feat", "loss_kd_cls", "loss_kd_box"}
    for name, value in terms.items():
        assert abs(float(value)) < 1e-6, (name, float(value))


def test_gradients_reach_the_student_only(tiny, teacher_pt):
    student = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model.train()
    distiller = Distiller(teacher_pt, DistillOptions())
    distiller.attach(student)
    try:
        student.loss(fake_batch())
        terms = distiller.terms()
        assert all(float(v) > 0 for v in terms.values()), terms  # a pruned student differs from its teacher
        sum(terms.values()).backward()
        teacher = distiller.teacher
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
        proj = student.model[-1].input_proj[0][0].weight  # a layer every term reaches
        assert proj.grad is not None and proj.grad.abs().sum() > 0
    finally:
        distiller.detach()
    assert student.criterion is None and not student.model[-1].enc_score_head._forward_hooks  # detached cleanly


def test_terms_are_weighted_and_scale_free():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 4)

    def points() -> Points:
        return Points([torch.randn(2, 8, 4, 4, generator=g)], torch.randn(2, 50, 3, generator=g),
                      torch.randn(2, 50, 6, generator=g), head)

    s, t = points(), points()
    one = distill_terms(s, t, DistillOptions(distill_feat=1, distill_cls=1, distill_box=1), k=10)
    two = distill_terms(s, t, DistillOptions(distill_feat=2, distill_cls=0, distill_box=3), k=10)
    assert float(two["loss_kd_feat"]) == pytest.approx(2 * float(one["loss_kd_feat"]))
    assert float(two["loss_kd_cls"]) == 0 and float(two["loss_kd_box"]) == pytest.approx(3 * float(one["loss_kd_box"]))
    # the feature term does not depend on the features' scale: x1000 on both gives the same value
    scaled = feature_term([f * 1000 for f in s.feats], [f * 1000 for f in t.feats])
    assert float(scaled) == pytest.approx(float(feature_term(s.feats, t.feats)), rel=1e-4)


def test_a_teacher_with_other_classes_is_refused(tiny, tmp_path):
    other = save_checkpoint(load_model("rtdetr-tiny", nc=5), tmp_path / "other.pt")
    with pytest.raises(UserError, match="predicts 5 classes"):
        Distiller(other, DistillOptions()).attach(copy.deepcopy(tiny))


def test_negative_weights_are_refused():
    with pytest.raises(UserError, match="--distill-box must be between 0 and 1000"):
        DistillOptions(distill_box=-1.0)


def test_finetune_with_distillation_trains_and_keeps_the_teacher_out_of_checkpoints(tiny, teacher_pt, data_yaml,
                                                                                     tmp_path):
    pruned = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model
    start = save_checkpoint(pruned, tmp_path / "pruned.pt")
    distiller = Distiller(teacher_pt, DistillOptions())
    trainer = finetune(start, data_yaml, 1, IMGSZ, 8, "cpu", 0, tmp_path, "ft", 0, distill=distiller)
    assert trainer.distiller is distiller and distiller.teacher is None  # detached at teardown
    saved = torch.load(trainer.last, map_location="cpu", weights_only=False)
    kept = saved["ema"] or saved["model"]  # a finished run keeps its EMA as "model"
    assert getattr(kept, "criterion", None) is None  # the teacher (held by the criterion) is never saved
    assert sum(p.numel() for p in kept.parameters()) == sum(p.numel() for p in pruned.parameters())
    finetuned = load_model(trainer.best)
    assert [m.weight.shape for m in finetuned.modules() if isinstance(m, torch.nn.Conv2d)] == \
           [m.weight.shape for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]  # pruned widths kept


def test_distiller_reaches_ddp_workers_through_the_callbacks(tiny, teacher_pt, data_yaml, tmp_path):
    """Rebuild the trainer as Ultralytics' DDP worker script does, from the state file it writes: the worker
    finds the distiller (teacher path and weights, nothing loaded) among its callbacks, registered once."""
    from ultralytics.utils import DEFAULT_CFG_DICT
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file
    from ultralytics.utils.patches import torch_load

    from rtdetr_prune.models.ultralytics.trainer import PrunedTrainer, train_args

    start = save_checkpoint(tiny, tmp_path / "start.pt")
    options = DistillOptions(distill_feat=0.5, distill_cls=2.0, distill_box=1.0)
    args = train_args(start, data_yaml, 1, IMGSZ, 8, "cpu", 0, tmp_path, "ddp", 0)
    trainer = PrunedTrainer(overrides=args, distill=Distiller(teacher_pt, options))
    file = generate_ddp_file(trainer)
    try:
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
    finally:
        ddp_cleanup(trainer, file)
    worker = state["trainer"](cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"],
                              _callbacks=state["callbacks"])
    assert worker.distiller.options == options and worker.distiller.teacher is None
    assert worker.distiller.teacher_path == str(Path(teacher_pt).resolve())
    assert sum(getattr(cb, "__self__", None) is worker.distiller for cb in worker.callbacks["on_train_start"]) == 1


def test_feature_distillation_with_a_pruned_memory_width_is_refused_up_front():
    """The feature term compares decoder inputs of equal width: pruning that width (--decoder-parts memory) would
    fail in the middle of finetuning, so the recipe refuses the pair at the start; output terms alone are fine."""
    from rtdetr_prune.errors import UserError
    from rtdetr_prune.recipe import Recipe

    with pytest.raises(UserError, match="--distill-feat 0"):
        Recipe(distill=True, decoder_parts="memory,value").validate()
    assert Recipe(distill=True, decoder_parts="memory", distill_feat=0.0).validate()
    assert Recipe(distill=True, decoder_parts="value,ffn,mlp").validate()
