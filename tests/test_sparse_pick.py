"""Which sparse-training epoch gets pruned: best, last, or the most prunable one (scored every epoch by pruning
a copy to the target), recorded in sparsity.csv; and the widths chart's input checks."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import IMGSZ
from test_trainer import BATCH, FAST

from rtdetr_prune.errors import UserError
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.models.ultralytics.prunability import PROBE_FILE, PruneProbe
from rtdetr_prune.models.ultralytics.sparse_trainer import picked, sparse_train
from rtdetr_prune.pipeline import prune
from rtdetr_prune.pruning.engine import PruneOptions
from rtdetr_prune.recipe import Recipe
from rtdetr_prune.report import plot_widths, read_widths


def test_picked_names_the_epoch_and_falls_back_to_last(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "last.pt").write_bytes(b"last")
    assert {pick: picked(tmp_path, pick).name for pick in ("best", "last", "prunable")} == dict.fromkeys(
        ("best", "last", "prunable"), "last.pt"), "nothing validated yet: every pick is the last epoch"
    (weights / "best.pt").write_bytes(b"best")
    (weights / PROBE_FILE).write_bytes(b"probe")
    assert [picked(tmp_path, p).name for p in ("best", "last", "prunable")] == ["best.pt", "last.pt", PROBE_FILE]


def test_the_probe_scores_every_epoch_and_keeps_the_most_prunable(tmp_path):
    from rtdetr_prune.data import make_synthetic

    data = str(make_synthetic(tmp_path / "data", images=24, imgsz=IMGSZ, seed=0))
    torch.manual_seed(0)
    start = save_checkpoint(load_model("rtdetr-tiny", nc=3), tmp_path / "tiny.pt")
    probe = PruneProbe("slim", PruneOptions(speed_up=1.3, imgsz=IMGSZ, round_to=8), images=8)
    kept = sparse_train(start, data, "slim", 2, 1e-3, 1e-4, "constant", IMGSZ, BATCH, "cpu", 0, tmp_path, "sparse",
                        0, round_to=8, pick="prunable", probe=probe, **FAST)
    assert kept.name == PROBE_FILE
    with open(tmp_path / "sparse" / "sparsity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    scores = [float(r["pruned_map50_95"]) for r in rows]
    assert all(r["map50_95"] != "" for r in rows) and all(0.0 <= s <= 1.0 for s in scores)
    best = max(i for i, s in enumerate(scores) if s == max(scores))  # ties: the later, sparser epoch
    assert torch.load(kept, map_location="cpu", weights_only=False)["epoch"] == best, "prunable.pt is that epoch"
    assert len((tmp_path / "sparse" / "probe" / "val.txt").read_text().splitlines()) == 6, "6 val images, all"


def test_prunable_needs_a_probe(tmp_path):
    with pytest.raises(ValueError, match="probe"):
        sparse_train(tmp_path / "x.pt", "data.yaml", "slim", 1, 1e-3, 1e-4, "constant", IMGSZ, BATCH, "cpu", 0,
                     tmp_path, "s", 0, pick="prunable")


def test_the_pipeline_prunes_the_picked_epoch_and_records_it(data_yaml, tmp_path):
    recipe = Recipe(model="rtdetr-tiny", data=data_yaml, method="slim", speed_up=1.3, epochs=0, sparse_epochs=1,
                    sparse_pick="last", imgsz=IMGSZ, batch=4, workers=0, device="cpu", project=str(tmp_path),
                    name="last", round_to=8, latency=False, val=False, sensitivity=0)
    prune(recipe)
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    assert state["sparse"]["pick"] == "last" and state["sparse"]["checkpoint"].endswith("sparse/weights/last.pt")
    with pytest.raises(UserError, match="prunable"):
        Recipe(sparse_pick="prunabel").validate()


def test_widths_chart_checks_its_input(tmp_path):
    good = tmp_path / "widths.csv"
    good.write_text("group,original,pruned\nmodel.1.conv,64,32\nmodel.2.conv,128,128\n")
    assert read_widths(good) == [("model.1.conv", 64, 32), ("model.2.conv", 128, 128)]
    assert plot_widths(good, tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    for text, match in [("group,original\nx,1\n", "missing column"), ("group,original,pruned\n", "no rows"),
                        ("group,original,pruned\nx,1.5,1\n", "whole numbers")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(UserError, match=match):
            read_widths(bad)
