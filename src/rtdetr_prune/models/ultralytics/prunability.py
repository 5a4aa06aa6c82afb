"""How prunable each sparse-training epoch is: its model pruned to the target, before any finetuning, on val images.

Sparse training keeps, by Ultralytics' rule, the epoch with the best mAP50-95 (``best.pt``): often an early,
barely sparse one, which then loses the most when pruned. :class:`PruneProbe` measures what pruning will
actually see. After every epoch's checkpoint is saved (Ultralytics' ``on_model_save`` event, rank 0 only), it
prunes a copy of the saved model (the EMA) to the target with the run's method and options, measures its
mAP50-95 on an evenly spaced subset of the val images, and, when that is the best so far (ties go to the later,
sparser epoch), copies the epoch's checkpoint to ``weights/prunable.pt``. The scores go into sparsity.csv
(column ``pruned_map50_95``) through :class:`~rtdetr_prune.models.ultralytics.sparse_trainer.Sparsifier`.

Example:
    >>> probe = PruneProbe("group_reg", PruneOptions(speed_up=2.0, imgsz=640))
    >>> sparse_train("baseline.pt", "data.yaml", "group_reg", 30, ..., probe=probe)  # -> weights/prunable.pt
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from rtdetr_prune.pruning.analysis.prunable import Plan

PROBE_IMAGES = 200  # val images per probe: a few hundred objects rank epochs; on real data it costs a
# fraction of the epoch's own validation (a pruning pass is seconds, see docs/benchmarks.md, engine cost)
PROBE_FILE = "prunable.pt"  # in the training run's weights/ folder


@dataclass
class PruneProbe:
    """Prune the epoch's model to the target and measure it (see the module docstring).

    Attributes:
        method: the pruning method's name.
        options: the engine's options (:class:`~rtdetr_prune.pruning.engine.PruneOptions`), target included.
        plan: what may be pruned, computed on the model sparse training started from (same layers); None: computed
            on the first epoch's model.
        images: val images to measure on (evenly spaced over the val split; all of them if fewer).
        best: the best score so far (-1 before the first; restored from sparsity.csv on resume).
    """

    method: str
    options: object
    plan: Plan | None = None
    images: int = PROBE_IMAGES
    best: float = -1.0

    def __call__(self, trainer, model: nn.Module) -> float:
        """Score ``model`` (the epoch's saved EMA); keep its checkpoint as prunable.pt if it is the best so far."""
        from rtdetr_prune.models.ultralytics.evaluate import val_map
        from rtdetr_prune.pruning.engine import prune_to_target
        from rtdetr_prune.pruning.methods import get_method

        result = prune_to_target(model, get_method(self.method), self.options, plan=self.plan)
        score = val_map(result.model, str(self._data(trainer)), trainer.args.imgsz, trainer.args.batch,
                        _one_device(trainer), 0, trainer.save_dir / "probe" / "val")[1]
        if score >= self.best and trainer.last.is_file():  # ties: the later (sparser) epoch
            self.best = score
            kept = trainer.wdir / PROBE_FILE
            tmp = kept.with_suffix(".tmp")
            shutil.copyfile(trainer.last, tmp)
            tmp.replace(kept)
        return score

    def _data(self, trainer) -> Path:
        """A data YAML whose val split is the probe's subset of the run's val images (written once per run)."""
        folder = trainer.save_dir / "probe"
        path = folder / "data.yaml"
        if not path.is_file():
            files = list(trainer.test_loader.dataset.im_files)
            step = max(1, len(files) / self.images)
            subset = [files[int(i * step)] for i in range(min(self.images, len(files)))]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "val.txt").write_text("".join(str(Path(f).resolve()) + "\n" for f in subset))
            names = trainer.data["names"]
            spec = {"train": str((folder / "val.txt").resolve()), "val": str((folder / "val.txt").resolve()),
                    "names": dict(names) if isinstance(names, dict) else list(names)}
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path


def _one_device(trainer) -> str:
    """The trainer's device as one Ultralytics device string ("cpu", "0", "mps")."""
    device = trainer.device
    return str(device.index or 0) if device.type == "cuda" else device.type
