"""Train the demo checkpoint shipped in src/rtdetr_prune/assets/demo-tiny/ (safetensors + JSON spec).

    python scripts/make_demo_checkpoint.py [--epochs 100] [--out src/rtdetr_prune/assets/demo-tiny]

rtdetr-tiny, trained from scratch on the built-in synthetic shapes data (seed 0, 96 images, 160 px),
the same data `rtdetr-prune demo` regenerates. Prints the checkpoint's val mAP50 as its last line.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from rtdetr_prune.data import make_synthetic
from rtdetr_prune.demo import DEMO_DATA
from rtdetr_prune.measure.stage import val_map
from rtdetr_prune.models import load_model
from rtdetr_prune.models.ultralytics.safe import save_safe
from rtdetr_prune.models.ultralytics.trainer import train_baseline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).parents[1] / "src/rtdetr_prune/assets/demo-tiny"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo_ckpt_"))
    data = make_synthetic(work / "data", **DEMO_DATA)
    trainer = train_baseline("rtdetr-tiny", data, epochs=args.epochs, imgsz=DEMO_DATA["imgsz"], batch=16, device="cpu",
                             workers=0, project=work, name="train", seed=0, deterministic=True)
    model = load_model(trainer.best).float()
    m50, m5095 = val_map(model, str(data), DEMO_DATA["imgsz"], batch=16, device="cpu", workers=0)
    save_safe(model, args.out, meta={"made_by": "scripts/make_demo_checkpoint.py", "epochs": args.epochs,
                                     "data": DEMO_DATA, "val_map50": m50, "val_map50_95": m5095})
    print(f"demo checkpoint: {args.out}  params {sum(p.numel() for p in model.parameters()):,}")
    print(f"val mAP50 {m50:.3f}  mAP50-95 {m5095:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
