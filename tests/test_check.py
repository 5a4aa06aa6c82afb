"""`check`: what can be pruned, how far, and what is skipped and why."""

import json

import pytest
import torch
from conftest import IMGSZ
from torch import nn

from rtdetr_prune.cli import main
from rtdetr_prune.models import load_model
from rtdetr_prune.pruning.analysis.check import check_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method


class ChunkGate(nn.Module):
    """A user's gating block around an existing layer: chunk, gate one half by the other, concat.

    Torch-Pruning 1.6.1 cannot trace the chunk-multiply-concat pattern (its index mapping fails).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        for k in ("i", "f", "type", "np"):  # Ultralytics' routing attributes
            setattr(self, k, getattr(inner, k))

    def forward(self, x):
        a, b = self.inner(x).chunk(2, 1)
        return torch.cat([a * b.sigmoid(), b], 1)


@pytest.mark.parametrize("name", ["rtdetr-l", "rtdetr-r18", "rtdetr-r50"])
def test_check_zoo_models(name):
    r = check_model(load_model(name), imgsz=320)
    assert r["prunable"] and r["groups"] > 10
    assert r["protected"][0]["layer"] == f"model.{len(load_model(name).model) - 1}"
    assert "decoder" in r["protected"][0]["reason"]
    assert 1.5 < r["max_speed_up"] < 20
    assert sum(r["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert r["share"]["protected"] > 0 and r["share"]["prunable"] > 0.5


def test_untraceable_module_is_named_with_reason(tiny):
    tiny.model[10] = ChunkGate(tiny.model[10])
    r = check_model(tiny, imgsz=IMGSZ)
    gate = [s for s in r["skipped"] if s["layer"] == "model.10"]
    assert gate and "cannot trace ChunkGate" in gate[0]["reason"]
    coupled = [s for s in r["skipped"] if "ChunkGate" in s["reason"] and s["layer"] != "model.10"]
    assert coupled, "groups feeding or fed by the untraceable block are skipped too"
    assert r["prunable"] and r["max_speed_up"] > 1.2  # the rest still prunes


def test_model_with_untraceable_module_still_prunes(tiny):
    tiny.model[10] = ChunkGate(tiny.model[10])
    result = prune_to_target(tiny, get_method("lamp"), PruneOptions(speed_up=1.3, imgsz=IMGSZ))
    assert 1.3 <= result.speed_up <= 1.3 * 1.03
    inner = result.model.model[10].inner
    assert inner.cv3.conv.out_channels == 64  # the gated block's output is kept whole
    with torch.no_grad():
        assert result.model.eval()(torch.zeros(1, 3, IMGSZ, IMGSZ))[0].shape == (1, 30, 6)


def test_cli_check_json(capsys):
    assert main(["check", "--model", "rtdetr-tiny", "--imgsz", "160", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "rtdetr-tiny" and r["max_speed_up"] > 1.5


def test_cli_check_text_and_bad_imgsz(capsys):
    assert main(["check", "--model", "rtdetr-tiny", "--imgsz", "160"]) == 0
    out = capsys.readouterr().out
    assert "max reachable speed-up" in out and "protected" in out
    assert main(["check", "--model", "rtdetr-tiny", "--imgsz", "150"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
