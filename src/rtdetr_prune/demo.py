"""`rtdetr-prune demo`: the whole pipeline on built-in data, in minutes on a laptop CPU.

Regenerates the synthetic shapes dataset the shipped checkpoint was trained on, prunes the checkpoint
with LAMP to 1.5x fewer GFLOPs, finetunes briefly, evaluates every stage and prints the table.
"""

from __future__ import annotations

from pathlib import Path

from rtdetr_prune.data import make_synthetic

ASSET = Path(__file__).parent / "assets" / "demo-tiny"  # made by scripts/make_demo_checkpoint.py
DEMO_DATA = {"images": 96, "imgsz": 160, "seed": 0}  # the data the shipped checkpoint was trained on
DEMO_ROUND_TO = 8  # the demo model's layers are 16-128 channels wide: the default units of 16 would halve them


def run_demo(project: str | Path = "runs/demo", epochs: int = 30, method: str = "lamp", speed_up: float = 1.5) -> dict:
    """Run the demo; return the report (its run directory is under ``"run_dir"``)."""
    from rtdetr_prune.pipeline import prune
    from rtdetr_prune.recipe import Recipe

    project = Path(project)
    data = make_synthetic(project / "data", **DEMO_DATA)
    recipe = Recipe(model=str(ASSET), data=str(data), method=method, speed_up=speed_up, epochs=epochs,
                    imgsz=DEMO_DATA["imgsz"], round_to=DEMO_ROUND_TO, batch=16, workers=0, device="cpu",
                    project=str(project), name=method)
    return prune(recipe)
