"""rtdetr-prune: structured pruning and finetuning for Ultralytics RT-DETR detectors.

Example:
    >>> import rtdetr_prune
    >>> report = rtdetr_prune.prune(model="best.pt", data="data.yaml", method="lamp", speed_up=1.5)
    >>> report["pruned"]["gflops"], report["finetuned"]["map50_95"]

Importing the package registers the zoo's ResNet-vd backbones with torchvision, so that the zoo's
YAML configs (and checkpoints made from them) build and load with the stock Ultralytics engine.
"""

import os

# Nothing is ever downloaded at run time: tell Ultralytics before it is imported (it probes the
# network at import otherwise). Set YOLO_OFFLINE=0 yourself to allow it.
os.environ.setdefault("YOLO_OFFLINE", "1")

from rtdetr_prune.zoo import load_model, zoo_names  # noqa: E402  (registers the backbones)
from rtdetr_prune import rewrites  # noqa: E402, F401  (registers the built-in rewrites, e.g. C2f's chunk)

__version__ = "0.1.0"
__all__ = ["load_model", "prune", "zoo_names"]


def prune(**options) -> dict:
    """Run a pruning job; keyword arguments are the recipe's options (see ``rtdetr_prune.recipe.Recipe``).

    ``config=PATH`` loads a recipe YAML first; the other keywords override it. Returns the report
    (also written to the run directory, whose path is under ``"run_dir"``).
    """
    from rtdetr_prune.pipeline import prune as run
    from rtdetr_prune.recipe import load_recipe

    config = options.pop("config", None)
    return run(load_recipe(config, options))
