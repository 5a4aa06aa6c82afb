"""rtdetr-prune: structured pruning and finetuning for RT-DETR detectors.

Example:
    >>> import rtdetr_prune
    >>> report = rtdetr_prune.prune(model="best.pt", data="data.yaml", method="lamp", speed_up=1.5)
    >>> report["pruned"]["gflops"], report["finetuned"]["map50_95"]

The package is laid out by concern: ``models/`` (model families: loading, saving, training,
evaluation; one folder per family), ``pruning/`` (the engine), ``train/``, ``measure/``, ``bench/``,
``report/``, ``data/`` and ``io/``; ``pipeline`` runs a whole job and ``cli`` parses commands.
Importing the package registers the built-in model families: Ultralytics RT-DETR (with the zoo's
ResNet-vd backbones and the built-in rewrites) and transformers' RT-DETR / RT-DETRv2 (transformers is
imported only when such a model is used).
"""

import os

# Nothing is ever downloaded at run time: tell Ultralytics before it is imported (it probes the
# network at import otherwise). Set YOLO_OFFLINE=0 yourself to allow it.
os.environ.setdefault("YOLO_OFFLINE", "1")

from rtdetr_prune._version import __version__  # noqa: E402
from rtdetr_prune.models import load_model, zoo_names  # noqa: E402
from rtdetr_prune.models import transformers as _transformers  # noqa: E402, F401  (registers it; transformers optional)
from rtdetr_prune.models import ultralytics as _ultralytics  # noqa: E402, F401  (registers the family)
from rtdetr_prune.pruning import rules  # noqa: E402  (users' plugins: `from rtdetr_prune import rules`)

__all__ = ["__version__", "load_model", "prune", "rules", "zoo_names"]


def prune(**options) -> dict:
    """Run a pruning job; keyword arguments are the recipe's options (see ``rtdetr_prune.recipe.Recipe``).

    ``config=PATH`` loads a recipe YAML first; the other keywords override it. Returns the report
    (also written to the run directory, whose path is under ``"run_dir"``).
    """
    from rtdetr_prune.pipeline import prune as run
    from rtdetr_prune.recipe import load_recipe

    config = options.pop("config", None)
    return run(load_recipe(config, options))
