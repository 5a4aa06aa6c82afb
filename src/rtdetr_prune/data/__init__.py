"""Datasets: a synthetic shapes set for tests and smoke runs, and converters from common formats to YOLO.

Example:
    >>> from rtdetr_prune.data import convert_dataset, make_synthetic
    >>> shapes_yaml = make_synthetic("runs/shapes")
    >>> voc_yaml = convert_dataset("voc", "SeaShips", "seaships-yolo")
"""

from rtdetr_prune.data.convert import convert_dataset, convert_formats, format_options
from rtdetr_prune.data.synthetic import SHAPES, make_synthetic, render_image

__all__ = ["SHAPES", "convert_dataset", "convert_formats", "format_options", "make_synthetic", "render_image"]
