"""The pipeline refuses what would fail later: a safe copy that does not load back as the pruned model, a
--sparse-model of other classes or another architecture; and `random` picks the same channels on resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ

from rtdetr_prune import guards, pipeline, rules
from rtdetr_prune.errors import UserError
from rtdetr_prune.io.safe import read_safe
from rtdetr_prune.models import family_of, load_model
from rtdetr_prune.pruning.engine import PruneOptions, prune_to_target
from rtdetr_prune.pruning.methods import get_method
from rtdetr_prune.recipe import Recipe

EXAMPLES = Path(__file__).parent.parent / "examples"


def _recipe(data_yaml, tmp_path, **kw) -> Recipe:
    base = dict(model="rtdetr-tiny", data=data_yaml, method="l1", speed_up=1.3, imgsz=IMGSZ, batch=4, workers=0,
                round_to=8, epochs=0, val=False, latency=False, project=str(tmp_path), name="run", sensitivity=0)
    return Recipe().updated({**base, **kw})


def test_a_custom_parameter_pruned_by_its_rule_survives_the_safe_copy(data_yaml, tmp_path):
    """ScaledResidual's own parameter (gamma) is pruned by its rule (the guide's example); the safe copy
    rebuilds it at its pruned size, and the pipeline's reload check finds the same outputs."""
    with rules.scoped():
        rules.load_plugin(EXAMPLES / "my_modules.py")
        rules.load_plugin(EXAMPLES / "my_rules.py")
        recipe = _recipe(data_yaml, tmp_path, model=str(EXAMPLES / "rtdetr-my-modules.yaml"), speed_up=2.0)
        pipeline.prune(recipe)
        safe = load_model(tmp_path / "run" / "weights" / "pruned_safe")
        pruned = load_model(tmp_path / "run" / "weights" / "pruned.pt")
        gammas = [m.gamma.shape for m in safe.modules() if type(m).__name__ == "ScaledResidual"]
        assert gammas and gammas == [m.gamma.shape for m in pruned.modules() if type(m).__name__ == "ScaledResidual"]
        unpruned = load_model(str(EXAMPLES / "rtdetr-my-modules.yaml"), nc=3)
        full = [m.gamma.shape for m in unpruned.modules() if type(m).__name__ == "ScaledResidual"]
        assert any(g[0] < f[0] for g, f in zip(gammas, full)), (gammas, full)  # gamma itself was pruned
        x = torch.rand(1, 3, IMGSZ, IMGSZ)
        assert guards.output_change(pruned, safe, x) < 1e-5


def test_a_safe_copy_that_does_not_load_back_stops_the_run(tmp_path):
    torch.manual_seed(0)
    model = load_model("rtdetr-tiny", nc=3)
    path = family_of(model).save_safe(model, tmp_path / "safe")
    (path / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(UserError, match="safe copy .* does not load back .*SHA-256"):
        guards.require_reloads(model, path, IMGSZ)
    assert not path.exists(), "a safe copy that does not load back is removed"


def test_a_safe_copy_with_other_outputs_is_refused(tmp_path):
    torch.manual_seed(0)
    model = load_model("rtdetr-tiny", nc=3)
    family = family_of(model)
    guards.require_reloads(model, family.save_safe(model, tmp_path / "same"), IMGSZ)  # exact: accepted
    torch.manual_seed(1)
    other = family.save_safe(load_model("rtdetr-tiny", nc=3), tmp_path / "other")
    with pytest.raises(UserError, match="computes other outputs"):
        guards.require_reloads(model, other, IMGSZ)
    assert not other.exists()


def test_sparse_model_of_other_classes_or_architecture_is_refused(data_yaml, tmp_path):
    torch.manual_seed(0)
    family = family_of(load_model("rtdetr-tiny", nc=3))
    five = family.save_checkpoint(load_model("rtdetr-tiny", nc=5), tmp_path / "nc5.pt")
    pruned = prune_to_target(load_model("rtdetr-tiny", nc=3), get_method("l1"),
                             PruneOptions(speed_up=1.3, imgsz=IMGSZ, round_to=8)).model
    narrower = family.save_checkpoint(pruned, tmp_path / "pruned.pt")
    with pytest.raises(UserError, match="predicts 5 classes, --model 3"):
        pipeline.prune(_recipe(data_yaml, tmp_path, method="slim", sparse_model=str(five)))
    with pytest.raises(UserError, match="not the architecture of --model 'rtdetr-tiny': 'model.* has shape"):
        pipeline.prune(_recipe(data_yaml, tmp_path, method="slim", sparse_model=str(narrower)))
    assert not (tmp_path / "run").exists(), "refused before anything is written"


def test_random_picks_the_same_channels_whatever_the_random_state(tiny):
    """The engine seeds each step from options.seed: the caller's random state (which differs after a
    resume, where earlier stages did not run) changes nothing, and the seed does."""
    def pruned(global_seed, seed=0):
        torch.manual_seed(global_seed)
        options = PruneOptions(speed_up=1.3, imgsz=IMGSZ, round_to=8, seed=seed)
        return prune_to_target(tiny, get_method("random"), options).model.state_dict()

    a, b, c = pruned(1), pruned(2), pruned(1, seed=5)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].shape != c[k].shape or not torch.equal(a[k], c[k]) for k in a), "the seed picks the channels"


def test_random_prune_stage_resumed_in_a_fresh_process_picks_the_same_channels(data_yaml, tmp_path):
    assert pipeline.prune(_recipe(data_yaml, tmp_path, method="random"))["speed_up_achieved"] >= 1.3
    run = tmp_path / "run"
    first = read_safe(run / "weights" / "pruned_safe")[1]
    state = json.loads((run / "state.json").read_text())
    del state["pruned"]  # killed after pruning, before the stage was recorded
    (run / "state.json").write_text(json.dumps(state))
    subprocess.run([sys.executable, "-m", "rtdetr_prune", "prune", "--resume", str(run)], check=True, timeout=600,
                   env={**os.environ, "RTDETR_PRUNE_QUIET": "1"}, capture_output=True)
    again = read_safe(run / "weights" / "pruned_safe")[1]
    assert first.keys() == again.keys()
    for k in first:  # the same channels: equal weights; BatchNorm statistics re-estimated in another process (its
        # thread count can change float summation order, so the last bits)
        if "running_" in k:
            torch.testing.assert_close(first[k], again[k], rtol=1e-4, atol=1e-6, msg=k)
        else:
            assert torch.equal(first[k], again[k]), k


def test_a_checkpoints_half_precision_anchors_do_not_count_as_a_mismatch(tmp_path):
    """Ultralytics saves checkpoints at half precision, the decoder's cached anchors too; loading recomputes
    them, so the pruned model and its safe copy agree exactly."""
    torch.manual_seed(0)
    model = load_model("rtdetr-tiny", nc=3)
    with torch.no_grad():
        model(torch.zeros(1, 3, IMGSZ, IMGSZ))  # caches the anchors
    model.half().float()  # as in a half-precision checkpoint: weights and cached anchors rounded
    family = family_of(model)
    loaded = load_model(family.save_checkpoint(model, tmp_path / "half.pt"))
    guards.require_reloads(loaded, family.save_safe(loaded, tmp_path / "safe"), IMGSZ)
