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
    assert accuracy.parse_args(["--arms", "l1 bn=0, lamp"]).candidates == [accuracy.Arm("l1", 2.0, bn_images=0),
                                                                           accuracy.Arm("lamp", 2.0)]


@pytest.mark.parametrize("label", ["lamp sideways", "lamp bn=", "lamp pick=last"])  # lamp trains no sparsity
def test_labels_that_name_no_recipe_are_refused(label):
    with pytest.raises(SystemExit, match="--arms"):
        accuracy.Arm.parse(label)
