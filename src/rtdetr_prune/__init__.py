"""rtdetr-prune: structured pruning and finetuning for Ultralytics RT-DETR detectors.

Importing the package registers the zoo's ResNet-vd backbones with torchvision, so that the zoo's YAML
configs (and checkpoints made from them) build and load with the stock Ultralytics engine.
"""

from rtdetr_prune.zoo import load_model, zoo_names  # noqa: F401  (registers the backbones)

__version__ = "0.1.0"
