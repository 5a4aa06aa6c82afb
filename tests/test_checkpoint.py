"""A saved pruned model reloads, through our loader and through stock Ultralytics, with identical outputs."""

import torch
from conftest import IMGSZ

from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method


def test_pruned_model_reloads_identically(tiny, tmp_path):
    pruned = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=1.5, imgsz=IMGSZ)).model.eval()
    path = save_checkpoint(pruned, tmp_path / "weights" / "pruned.pt", meta={"method": "lamp"})
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        expected = pruned(x)[0]
        ours = load_model(path).eval()(x)[0]
    assert torch.equal(expected, ours)
    assert not list(tmp_path.glob("weights/.*.tmp")), "no temp files left behind"

    from ultralytics import RTDETR

    stock = RTDETR(str(path)).model.eval()
    assert stock.model[0].m[3].blocks[0].cv1.conv.out_channels == pruned.model[0].m[3].blocks[0].cv1.conv.out_channels
    with torch.no_grad():  # Ultralytics' loader switches activations to in-place: last-bit differences only
        assert (stock(x)[0] - expected).abs().max() <= 1e-6
