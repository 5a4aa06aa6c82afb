"""Sparse training does what it is for: a penalized run ends sparser than the same run unpenalized; and
group_reg's growing penalties survive an interrupted, resumed run."""

import pytest
import torch
from conftest import IMGSZ
from test_trainer import BATCH, FAST, _interrupt_after_first_epoch, run_args

from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.models.ultralytics.sparse_trainer import SparseTrainer, sparse_train
from rtdetr_prune.train.sparsity import GROWTH_FILE, SparseOptions, bn_scales


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A randomly initialized rtdetr-tiny checkpoint (3 classes)."""
    torch.manual_seed(0)
    return save_checkpoint(load_model("rtdetr-tiny", nc=3), tmp_path_factory.mktemp("start") / "tiny.pt")


def test_a_penalized_run_ends_sparser_than_the_same_run_without_penalty(start, data_yaml, tmp_path):
    """slim's L1 penalty on the BatchNorm scales, against the identical run (same seed, data, steps) at reg=0."""
    scales = {}
    for reg in (0.0, 0.05):
        trainer = SparseTrainer(overrides=run_args(start, data_yaml, 2, tmp_path, f"reg{reg}", **FAST),
                                sparse=SparseOptions("slim", reg=reg))
        trainer.train()
        scales[reg] = bn_scales(load_model(trainer.last), trainer.sparsifier.bn_names)
    plain, sparse = scales[0.0], scales[0.05]
    assert plain.numel() == sparse.numel() > 100
    shrunk = (sparse < plain).float().mean()
    assert sparse.mean() < plain.mean() - 1e-3, (float(sparse.mean()), float(plain.mean()))
    assert shrunk > 0.9, f"only {shrunk:.0%} of the penalized scales ended smaller than without the penalty"


def test_group_reg_resume_continues_the_penalty_growth(start, data_yaml, tmp_path):
    reg, delta = 1e-4, 1e-3
    first = SparseTrainer(overrides=run_args(start, data_yaml, 3, tmp_path, "grow"),
                          sparse=SparseOptions("group_reg", reg=reg, delta_reg=delta))
    first.add_callback("on_fit_epoch_end", _interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    grown = {k: v.clone() for k, v in torch.load(first.save_dir / GROWTH_FILE, weights_only=True)[1].items()}

    sparse_train(start, data_yaml, "group_reg", 3, reg, delta, "constant", IMGSZ, BATCH, "cpu", 0, tmp_path, "grow",
                 0, resume=True)
    log = torch.load(first.save_dir / GROWTH_FILE, weights_only=True)
    assert sorted(log) == [1, 2, 3]
    assert log[1].keys() == grown.keys() and all(torch.equal(log[1][k], grown[k]) for k in grown)
    assert all((log[3][k] >= grown[k]).all() for k in grown), "the resumed run grew from epoch 1's penalties"
    top = max(float(v.max()) for v in log[3].values())
    assert top > reg + 2 * delta, "three updates in all: the two after the resume alone reach at most reg + 2 delta"
