"""benchmarks/accuracy.py: arm labels read back into the same recipe, and bad labels are refused."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import accuracy  # noqa: E402


def test_every_candidate_label_reads_back_as_itself():
    for arm in accuracy.FULL_CANDIDATES:
        assert accuracy.Arm.parse(arm.label, arm.target) == arm, arm.label
    arm = accuracy.Arm.parse("l1+kd bn=0 sens=64")
    assert (arm.method, arm.distill, arm.bn_images, arm.sensitivity, arm.target) == ("l1", True, 0, 64, 2.0)
    arm = accuracy.Arm.parse("lamp sens=64 dec=value+ffn")
    assert arm.recipe_options == {"sensitivity": 64, "decoder_parts": "value,ffn"}
    assert arm.label == "lamp sens=64 dec=value+ffn"
    assert accuracy.parse_args(["--arms", "l1 bn=0, lamp"]).candidates == [accuracy.Arm("l1", 2.0, bn_images=0),
                                                                           accuracy.Arm("lamp", 2.0)]


@pytest.mark.parametrize("label", ["lamp sideways", "lamp bn=", "lamp pick=last"])  # lamp trains no sparsity
def test_labels_that_name_no_recipe_are_refused(label):
    with pytest.raises(SystemExit, match="--arms"):
        accuracy.Arm.parse(label)


def test_a_cached_row_is_reused_only_for_the_options_it_was_run_with(tmp_path, monkeypatch):
    args = accuracy.parse_args(["--quick"])
    cell = accuracy.Cell(args, "shapes", 0, "d.yaml", "t.yaml", tmp_path / "model.pt", tmp_path)
    arm = accuracy.Arm.parse("lamp sens=64")
    fresh = []
    monkeypatch.setattr(cell, "_fresh", lambda a, like, done, options: fresh.append(options) or {"fresh": True})
    done = tmp_path / "rows" / "lamp_sens-64@2x.json"
    accuracy._write(done, {"arm": arm.label, "options": cell._options(arm)})
    assert cell.run(arm) == {"arm": arm.label, "options": cell._options(arm)} and not fresh
    args.epochs += 1  # the same label, another finetune: the cached row no longer answers it
    assert cell.run(arm) == {"fresh": True} and fresh == [cell._options(arm)]
    assert cell._options(accuracy.Arm.parse("lamp"))["sensitivity"] == 64  # the recipe's default is part of a row


def test_base_epochs_are_per_dataset_and_a_dataset_left_out_keeps_the_profiles_count():
    assert accuracy.parse_args(["--quick"]).base_epochs == {"shapes": 60, "clutter": 120}
    assert accuracy.parse_args(["--quick", "--base-epochs", "90"]).base_epochs == {"shapes": 90, "clutter": 90}
    assert accuracy.parse_args(["--quick", "--base-epochs", "clutter=150"]).base_epochs == {"shapes": 60,
                                                                                           "clutter": 150}
    for bad in ("coco=3", "abc", "0", "clutter=", "shapes=60,clutter"):
        with pytest.raises(SystemExit, match="shapes=60,clutter=120"):
            accuracy.parse_args(["--base-epochs", bad])
    assert accuracy._epochs_text({"shapes": 60, "clutter": 120}, ["clutter"]) == "120"
    assert accuracy._epochs_text({"shapes": 60, "clutter": 120}, ["shapes", "clutter"]) == "60 (shapes) / 120 (clutter)"
