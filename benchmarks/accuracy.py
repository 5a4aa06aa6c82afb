"""Accuracy benchmark to steer by: what each recipe keeps of a control's mAP50-95, with 95% intervals over seeds.

For each proxy dataset (the shapes set and the clutter set, :mod:`rtdetr_prune.data.clutter`) the script
generates the data (train, a small *select* split that training validates on to keep its best epoch, and a
held-out *test* split every number below is measured on), trains the baseline from scratch (deterministic,
seeded; nothing is downloaded), and then for each seed:

    control     the baseline finetuned for the same total epochs as every run (sparse epochs included)
    each arm    a recipe through rtdetr_prune.prune(...) (sparse training, pruning, finetuning) at a target
                speed-up, or a peer (plain Torch-Pruning, ModelOpt FastNAS; benchmarks/_peers.py) pruned to the
                same GFLOPs and finetuned the same way

Retention = the arm's finetuned mAP50-95 / the control's (same dataset, same seed), on the test split.
Intervals: benchmarks/_accuracy_report.py. The run goes in two phases: every candidate recipe at 2x, then the
one that keeps the most at 2x (the default the data chooses), its twin with distillation flipped, and the peers
(finetuned like the winner) at the other targets.

Profiles (explicit flags override them; sizes in docs/benchmarks.md, section 3):
    --quick   2 CPU cores: rtdetr-proxy at 160 px, one baseline per dataset, 3 finetune seeds
    --full    one GPU: rtdetr-r18 at 320 px, a baseline per seed, more data, epochs and methods

Usage:
    python benchmarks/accuracy.py --quick
    python benchmarks/accuracy.py --quick --calibrate      # also train the half-width proxy from scratch
    python benchmarks/accuracy.py --full --device 0
    python benchmarks/accuracy.py --quick --datasets shapes --seeds 1 --epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RTDETR_PRUNE_QUIET", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

import rtdetr_prune  # noqa: E402
from rtdetr_prune.measure.stage import val_map  # noqa: E402
from rtdetr_prune.models import load_model  # noqa: E402
from rtdetr_prune.models.ultralytics.checkpoint import save_checkpoint  # noqa: E402
from rtdetr_prune.pruning.methods import get_method  # noqa: E402
from rtdetr_prune.recipe import Recipe  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _accuracy_report as report  # noqa: E402
from _common import RESULTS, machine, md_machine, md_table, set_threads, write_results  # noqa: E402

DOCS_IMAGES = Path(__file__).parents[1] / "docs" / "images"
NARROW = Path(__file__).parent / "cfg" / "rtdetr-proxy-narrow.yaml"


@dataclass(frozen=True)
class Arm:
    """One way to get a pruned, finetuned model: a recipe of ours, or a peer (method "tp_magnitude"/"fastnas")."""

    method: str
    target: float
    distill: bool = False
    schedule: str = "oneshot"
    pick: str = "best"  # sparse methods only
    bn_images: int | None = None  # --bn-images (None: the recipe's default)
    sensitivity: int | None = None  # --sensitivity (None: the recipe's default)
    sensitivity_steps: int | None = None  # --sensitivity-steps (None: the recipe's default)
    decoder_parts: str | None = None  # --decoder-parts, comma-separated (None: the benchmark's --decoder-parts)

    @property
    def peer(self) -> bool:
        return self.method in ("tp_magnitude", "fastnas")

    @property
    def sparse(self) -> bool:
        return not self.peer and get_method(self.method).needs_sparse_training

    @property
    def label(self) -> str:
        """The recipe, without the target: 'lamp+kd', 'lamp+kd iterative', 'group_reg+kd pick=last', 'tp_magnitude'."""
        text = self.method + ("+kd" if self.distill else "")
        text += " iterative" if self.schedule == "iterative" else ""
        text += f" pick={self.pick}" if self.sparse else ""
        text += f" bn={self.bn_images}" if self.bn_images is not None else ""
        text += f" sens={self.sensitivity}" if self.sensitivity is not None else ""
        text += f" steps={self.sensitivity_steps}" if self.sensitivity_steps is not None else ""
        return text + (f" dec={self.decoder_parts.replace(',', '+')}" if self.decoder_parts is not None else "")

    @property
    def recipe_options(self) -> dict:
        """The recipe options this arm sets beyond the method, target, distillation, schedule and pick."""
        keys = ("bn_images", "sensitivity", "sensitivity_steps", "decoder_parts")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def at(self, target: float) -> "Arm":
        return dataclasses.replace(self, target=target)

    @classmethod
    def parse(cls, label: str, target: float = 2.0) -> "Arm":
        """The arm a label names ('lamp+kd iterative', 'group_reg pick=last', 'l1 bn=0'); inverse of :attr:`label`."""
        head, *words = label.split()
        method, distill = head.removesuffix("+kd"), head.endswith("+kd")
        arm = cls(method, target, distill=distill)
        for w in words:
            key, _, value = w.partition("=")
            if w == "iterative":
                arm = dataclasses.replace(arm, schedule="iterative")
            elif key in _WORDS and value:
                value = value.replace("+", ",") if key == "dec" else value if key == "pick" else int(value)
                arm = dataclasses.replace(arm, **{_WORDS[key]: value})
            else:
                raise SystemExit(f"--arms: cannot read '{w}' in '{label}' (words: iterative, pick=best|last|prunable, "
                                 "bn=N, sens=N, steps=K, dec=PART+PART|none)")
        if arm.label != label.strip() and not arm.peer:
            raise SystemExit(f"--arms: '{label}' reads as '{arm.label}'; give it that way")
        return arm


_WORDS = {"pick": "pick", "bn": "bn_images", "sens": "sensitivity", "steps": "sensitivity_steps",
          "dec": "decoder_parts"}  # label words -> Arm fields


# Candidates for the default, all run at 2x (phase 1). Chosen to answer the questions, not every combination:
# distillation alone (lamp with and without), one-shot against iterative (lamp+kd), which sparse epoch to prune
# (group_reg+kd: best, last, prunable, from one sparse-training run), the other method families, and BatchNorm
# recalibration after pruning (lamp with and without; every other arm recalibrates, the recipe's default).
QUICK_CANDIDATES = [
    Arm("lamp", 2.0), Arm("lamp", 2.0, distill=True), Arm("lamp", 2.0, distill=True, schedule="iterative"),
    Arm("group_norm", 2.0, distill=True), Arm("l1", 2.0, distill=True),
    Arm("group_reg", 2.0, distill=True, pick="prunable"), Arm("group_reg", 2.0, distill=True, pick="best"),
    Arm("group_reg", 2.0, distill=True, pick="last"), Arm("lamp", 2.0, bn_images=0),
]
FULL_CANDIDATES = QUICK_CANDIDATES + [
    Arm("group_taylor", 2.0, distill=True), Arm("group_hessian", 2.0, distill=True), Arm("random", 2.0, distill=True),
    Arm("slim", 2.0, distill=True, pick="prunable"), Arm("group_slim", 2.0, distill=True, pick="prunable"),
    Arm("group_sl", 2.0, distill=True, pick="prunable"), Arm("group_norm", 2.0), Arm("group_reg", 2.0, pick="prunable"),
]
PROFILES = {
    "quick": {"model": "rtdetr-proxy", "imgsz": 160, "batch": 16, "round_to": 8, "train": 160, "select": 32,
              "test": 240, "base_epochs": "shapes=60,clutter=120", "epochs": 15, "sparse_epochs": 5, "seeds": 3,
              "rounds": 3, "baseline_per_seed": False, "targets": "1.5,2,3", "device": "cpu",
              "candidates": QUICK_CANDIDATES},
    "full": {"model": "rtdetr-r18", "imgsz": 320, "batch": 16, "round_to": 16, "train": 2000, "select": 200,
             "test": 1000, "base_epochs": 120, "epochs": 60, "sparse_epochs": 20, "seeds": 3, "rounds": 3,
             "baseline_per_seed": True, "targets": "1.5,2,3", "device": "", "candidates": FULL_CANDIDATES},
}
DATASETS = ("shapes", "clutter")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="profile", const="quick", help="sized for 2 CPU cores (the full candidate list takes hours there; see docs/benchmarks.md, section 3)")
    g.add_argument("--full", action="store_const", dest="profile", const="full", help="one GPU")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--model", default=None, help="zoo name or YAML of the proxy model")
    for key, kind in [("imgsz", int), ("batch", int), ("round_to", int), ("train", int), ("select", int),
                      ("test", int), ("base_epochs", str), ("epochs", int), ("sparse_epochs", int), ("seeds", int),
                      ("rounds", int), ("targets", str), ("device", str)]:
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--decoder-parts", default=Recipe.__dataclass_fields__["decoder_parts"].default,
                   help="our runs' --decoder-parts where an arm sets none (default: the recipe's, auto; none prunes "
                   "the region the peers prune)")
    p.add_argument("--arms", default=None, help="run these recipes as the candidates at 2x instead of the profile's, "
                   "comma-separated labels (e.g. 'lamp+kd,l1 bn=0': method[+kd] [iterative] [pick=P] [bn=N] [sens=N] "
                   "[steps=K] [dec=value+ffn])")
    p.add_argument("--no-twin", action="store_true", help="phase 2 without the winner's distillation twin")
    p.add_argument("--peers", default="tp_magnitude,fastnas", help="peers to run at 2x ('' for none)")
    p.add_argument("--calibrate", action="store_true", help="also train the half-width proxy from scratch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default="runs/benchmarks/accuracy", help="data, baselines and runs go here")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--docs-images", default=str(DOCS_IMAGES), help="where the retention chart goes")
    args = p.parse_args(argv)
    args.profile = args.profile or "quick"
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.targets = [float(t) for t in str(args.targets).split(",")]
    args.base_epochs = {**parse_base_epochs(str(PROFILES[args.profile]["base_epochs"])),
                        **parse_base_epochs(str(args.base_epochs))}
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if args.arms:  # any recipe, not only the profile's candidates
        args.candidates = [Arm.parse(a.strip()) for a in args.arms.split(",") if a.strip()]
    return args


def parse_base_epochs(text: str) -> dict[str, int]:
    """--base-epochs: one count for every dataset ("60"), or per dataset ("shapes=60,clutter=120"; a dataset left
    out keeps the profile's count).

    The quick profile trains the clutter set's baseline twice as long: with 60 epochs it stopped at mAP50-95
    0.05-0.06, too weak a model to measure what pruning takes from it (docs/benchmarks.md, 3g).
    """
    usage = (f"--base-epochs {text!r}: give one count, or counts per dataset ({', '.join(DATASETS)}), "
             "e.g. shapes=60,clutter=120")
    if "=" not in text:
        counts = dict.fromkeys(DATASETS, text.strip())
    else:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        counts = {k.strip(): v.strip() for k, v in pairs} if all(len(p) == 2 for p in pairs) else {}
    if not counts or not set(counts) <= set(DATASETS) or not all(v.isdigit() and int(v) > 0 for v in counts.values()):
        raise SystemExit(usage)
    return {k: int(v) for k, v in counts.items()}


# --- data and baselines ----------------------------------------------------------------------------------------

def make_data(kind: str, folder: Path, args, seed: int) -> tuple[str, str]:
    """(data YAML: train + select, test YAML: train + test) for one proxy dataset, generated deterministically."""
    from rtdetr_prune.data import SHAPES, make_synthetic
    from rtdetr_prune.data.clutter import make_clutter

    total = args.train + args.select + args.test
    held = (args.select + args.test) / total
    if kind == "shapes":  # all five shapes: two more classes than the demo's data
        make_synthetic(folder, images=total, imgsz=args.imgsz, seed=seed, val_fraction=held, names=tuple(SHAPES))
    else:
        make_clutter(folder, images=total, imgsz=args.imgsz, seed=seed, val_fraction=held)
    names = yaml.safe_load((folder / "data.yaml").read_text())["names"]
    val = sorted((folder / "images" / "val").iterdir())
    select, test = val[:args.select], val[args.select:]
    for name, files in (("select", select), ("test", test)):
        (folder / f"{name}.txt").write_text("".join(f"{f.resolve()}\n" for f in files))
    paths = {}
    for name, split in (("data", "select"), ("test", "test")):
        spec = {"path": str(folder.resolve()), "train": "images/train", "val": f"{split}.txt", "names": names}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths[name] = str(folder / f"{name}.yaml")
    return paths["data"], paths["test"]


def train_from_scratch(model: str, data: str, args, work: Path, name: str, seed: int,
                       epochs: int) -> tuple[Path, float]:
    """A model trained from scratch for ``epochs`` (reused when this exact run finished before); (checkpoint
    in our format, minutes it took)."""
    from rtdetr_prune.models.ultralytics.trainer import train_baseline

    out, record = work / name / "model.pt", work / name / "record.json"
    if out.is_file() and record.is_file():
        return out, json.loads(record.read_text())["minutes"]
    t0 = time.perf_counter()
    shutil.rmtree(work / name, ignore_errors=True)
    trainer = train_baseline(model, data, epochs, args.imgsz, args.batch, args.device, 0, work, name,
                             seed, exist_ok=True)
    save_checkpoint(load_model(trainer.best), out, train_args={"data": data, "imgsz": args.imgsz})
    minutes = (time.perf_counter() - t0) / 60
    record.write_text(json.dumps({"minutes": minutes, "model": model, "epochs": epochs, "seed": seed}))
    return out, minutes


def test_map(model_or_path, test_yaml: str, args, save: Path) -> float:
    model = load_model(model_or_path) if not isinstance(model_or_path, torch.nn.Module) else model_or_path
    return val_map(model, test_yaml, args.imgsz, args.batch, args.device, 0, save)[1]


# --- runs ------------------------------------------------------------------------------------------------------

class Cell:
    """One dataset and seed: its data, baseline, control, and the arms run on them."""

    def __init__(self, args, kind: str, seed: int, data: str, test: str, baseline: Path, work: Path):
        self.args, self.kind, self.seed, self.data, self.test, self.baseline = args, kind, seed, data, test, baseline
        self.work = work
        self.sparse: dict[tuple, Path] = {}  # (method, distill) -> a finished sparse-training run's folder
        self.control = None

    def run_control(self) -> dict:
        from rtdetr_prune.models.ultralytics.trainer import finetune

        done = self.work / "rows" / "control.json"  # finished work is kept: a rerun continues where it stopped
        if done.is_file():
            self.control = json.loads(done.read_text())
            return self.control
        t0 = time.perf_counter()
        trainer = finetune(self.baseline, self.data, self.args.epochs, self.args.imgsz, self.args.batch,
                           self.args.device, 0, self.work, "control", self.seed, exist_ok=True)
        best = trainer.best if trainer.best.is_file() else trainer.last
        self.control = {"map50_95": test_map(best, self.test, self.args, self.work / "val-control"),
                        "baseline_map50_95": test_map(self.baseline, self.test, self.args, self.work / "val-baseline"),
                        "seconds": time.perf_counter() - t0}
        _write(done, self.control)
        return self.control

    def run(self, arm: Arm, finetune_like: Arm | None = None) -> dict:
        done = self.work / "rows" / f"{_name(arm)}.json"
        options = self._options(arm)
        if done.is_file():
            row = json.loads(done.read_text())
            if row.get("options", options) != options:  # rows from before "options" was recorded are trusted
                print(f"{arm.label} @{arm.target:g}x: the cached row was run with other options "
                      f"({row['options']}); running it again", flush=True)
                return self._fresh(arm, finetune_like, done, options)
            if arm.sparse and row.get("sparse_dir"):
                self.sparse.setdefault((arm.method, arm.distill), Path(row["sparse_dir"]))
            return row
        return self._fresh(arm, finetune_like, done, options)

    def _options(self, arm: Arm) -> dict:
        """What a row depends on besides its cell: the recipe options our runs set (a peer: its finetune's epochs)."""
        a = self.args
        base = {"epochs": a.epochs, "imgsz": a.imgsz, "batch": a.batch, "round_to": a.round_to}
        if arm.peer:
            return base
        keys = ("sensitivity", "sensitivity_steps", "bn_images")  # recipe defaults an arm can leave unset
        defaults = {f.name: f.default for f in dataclasses.fields(Recipe) if f.name in keys}
        return {**base, **defaults, "decoder_parts": a.decoder_parts, "sparse_epochs": a.sparse_epochs,
                "rounds": a.rounds, **arm.recipe_options}

    def _fresh(self, arm: Arm, finetune_like: Arm | None, done: Path, options: dict) -> dict:
        t0 = time.perf_counter()
        if arm.peer:
            result = self._peer(arm, finetune_like)
        else:
            result = self._ours(arm)
        row = {"dataset": self.kind, "seed": self.seed, "arm": arm.label, "kind": "peer" if arm.peer else "ours",
               "target": arm.target, **result, "options": options, "seconds": time.perf_counter() - t0}
        control = self.control["map50_95"]  # 0 only in smoke runs whose baseline learned nothing
        row["retention"] = row["finetuned_map50_95"] / control if control > 0 else float("nan")
        _write(done, row)
        return row

    def _ours(self, arm: Arm) -> dict:
        a, name = self.args, _name(arm)
        extra = {"decoder_parts": a.decoder_parts} if arm.decoder_parts is None else {}
        done = self.sparse.get((arm.method, arm.distill))
        if arm.sparse and arm.pick != "prunable" and done is not None:  # best and last: the same training's epochs
            extra["sparse_model"] = str(done / "weights" / f"{arm.pick}.pt")
        shutil.rmtree(self.work / name, ignore_errors=True)
        rep = rtdetr_prune.prune(model=str(self.baseline), data=self.data, method=arm.method, speed_up=arm.target,
                                 epochs=a.epochs - (a.sparse_epochs if arm.sparse else 0),
                                 sparse_epochs=a.sparse_epochs, schedule=arm.schedule, rounds=a.rounds,
                                 distill=arm.distill, sparse_pick=arm.pick, imgsz=a.imgsz, batch=a.batch, workers=0,
                                 device=a.device, project=str(self.work), name=name, round_to=a.round_to,
                                 latency=False, val=False, seed=self.seed, **extra, **arm.recipe_options)
        run = Path(rep["run_dir"])
        if arm.sparse and "sparse_model" not in extra:  # this sparse training serves best and last too
            self.sparse.setdefault((arm.method, arm.distill), run / "sparse")
        state = json.loads((run / "state.json").read_text())
        sparse = {"sparse_dir": str(run / "sparse")} if arm.sparse and "sparse_model" not in extra else {}
        return {**sparse, "speed_up": rep["speed_up_achieved"], "gflops": rep["pruned"]["gflops"], "run_dir": str(run),
                "pruned_map50_95": test_map(run / "weights" / "pruned_safe", self.test, a, run / "val-test-pruned"),
                "finetuned_map50_95": test_map(state["finetuned"]["checkpoint"], self.test, a, run / "val-test")}

    def _peer(self, arm: Arm, like: Arm) -> dict:
        """Prune with a peer (once per baseline, kept next to it: the same for every seed when the baseline is), then
        finetune as the ``like`` recipe finetunes (its distillation; every epoch, as peers train no sparsity)."""
        import _peers

        from rtdetr_prune.models.ultralytics.distiller import Distiller
        from rtdetr_prune.models.ultralytics.trainer import finetune
        from rtdetr_prune.train.distill import DistillOptions

        a, name = self.args, f"{arm.method}@{arm.target:g}x"
        pruned, record = self.baseline.parent / "peers" / name, self.baseline.parent / "peers" / name / "peer.json"
        if not record.is_file():
            base = load_model(self.baseline)
            if arm.method == "tp_magnitude":
                model, info = _peers.torch_pruning_magnitude(base, arm.target, a.imgsz)
            else:
                model, info = self._fastnas(base, arm.target, pruned / "search")
            save_checkpoint(model, pruned / "pruned.pt", train_args={"data": self.data, "imgsz": a.imgsz})
            info["pruned_map50_95"] = test_map(model, self.test, a, pruned / "val-test")
            _write(record, info)
        info = json.loads(record.read_text())
        distill = Distiller(self.baseline, DistillOptions()) if like.distill else None
        folder = self.work / name
        trainer = finetune(pruned / "pruned.pt", self.data, a.epochs, a.imgsz, a.batch, a.device, 0, folder,
                           "finetune", self.seed, exist_ok=True, distill=distill)
        best = trainer.best if trainer.best.is_file() else trainer.last
        return {"speed_up": info["speed_up"], "gflops": info["gflops"], "run_dir": str(pruned),
                "pruned_map50_95": info["pruned_map50_95"], "peer": info,
                "finetuned_map50_95": test_map(best, self.test, a, folder / "val-test")}

    def _fastnas(self, base, target: float, folder: Path):
        """FastNAS with its default channel divisor; if no subnet reaches the target, with ours (round_to)."""
        import _peers

        from rtdetr_prune.data.yolo import data_batches, load_data

        a = self.args
        batches = data_batches(load_data(self.data), a.imgsz, a.batch)
        calib = [b["img"] for _, b in zip(range(4), batches())]
        score = lambda det: val_map(det, self.data, a.imgsz, a.batch, a.device, 0, folder / "score")[1]  # noqa: E731
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            return _peers.modelopt_fastnas(base, target, a.imgsz, calib, score, folder)
        except ValueError as e:
            if "constraints" not in str(e):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            return _peers.modelopt_fastnas(base, target, a.imgsz, calib, score, folder, divisor=a.round_to)


# --- the whole benchmark -----------------------------------------------------------------------------------------

def winner(summary: list[dict], candidates: list[Arm]) -> Arm:
    """The candidate keeping the most at 2x over the datasets (the default the data chooses)."""
    at2 = {e["arm"]: e["overall"]["mean"] for e in summary if e["target"] == 2.0 and e["kind"] == "ours"}
    return max((c for c in candidates if c.label in at2), key=lambda c: at2[c.label])


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    info, load_before = machine(), os.getloadavg()
    t_start = time.perf_counter()
    work = Path(args.workdir).resolve() / args.profile
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    seeds = list(range(args.seeds))
    cells, baselines, calibration = [], {}, {}
    for kind in datasets:
        for seed in seeds:
            data_seed = seed if args.baseline_per_seed else 0
            folder = work / "data" / f"{kind}-{data_seed}"
            if not (folder / "test.yaml").is_file():
                make_data(kind, folder, args, data_seed)
            data, test = str(folder / "data.yaml"), str(folder / "test.yaml")
            key = f"{kind}-{args.model}-{args.imgsz}px-{args.base_epochs[kind]}ep-seed{data_seed}"
            if key not in baselines:
                path, minutes = train_from_scratch(args.model, data, args, work / "baselines", key, data_seed,
                                                   args.base_epochs[kind])
                baselines[key] = {"path": path, "minutes": minutes, "map50_95": test_map(path, test, args,
                                                                                          work / "baselines" / key / "val")}
                print(f"baseline {key}: test mAP50-95 {baselines[key]['map50_95']:.3f} ({minutes:.1f} min)", flush=True)
                if args.calibrate and kind not in calibration:
                    calibration[kind] = calibrate(args, kind, data, test, work, baselines[key])
            cells.append(Cell(args, kind, seed, data, test, baselines[key]["path"], work / "runs" / f"{kind}-{seed}"))
    rows = []
    for cell in cells:
        print(f"{cell.kind} seed {cell.seed}: control {cell.run_control()}", flush=True)
    for arm in args.candidates:  # phase 1: every candidate at 2x
        for cell in cells:
            rows.append(_log(cell.run(arm)))
    best = winner(report.summarize(rows, datasets), args.candidates)
    twin = dataclasses.replace(best, distill=not best.distill)
    phase2 = [best.at(t) for t in args.targets if t != 2.0]
    phase2 += [] if args.no_twin else [twin.at(t) for t in args.targets]
    phase2 += [Arm(peer, 2.0) for peer in args.peers]
    done = {(r["arm"], r["target"]) for r in rows}
    for arm in phase2:  # phase 2: the winner and its distillation twin at every target; the peers at 2x
        if (arm.label, arm.target) in done:
            continue
        for cell in cells:
            try:
                rows.append(_log(cell.run(arm, finetune_like=best)))
            except Exception as e:  # noqa: BLE001 - a peer that cannot prune this model is a result, not a crash
                if not arm.peer:
                    raise
                rows.append({"dataset": cell.kind, "seed": cell.seed, "arm": arm.label, "target": arm.target,
                             "kind": "peer", "failed": f"{type(e).__name__}: {str(e)[:300]}"})
                print(f"{arm.label} failed on {cell.kind}: {rows[-1]['failed']}", flush=True)
    ok = [r for r in rows if "failed" not in r]
    summary = report.summarize(ok, datasets)
    latency = latency_side_by_side(args, cells, ok, best) if args.peers else None
    result = {"settings": _settings(args), "machine": info, "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "baselines": {k: {**v, "path": str(v["path"])} for k, v in baselines.items()},
              "controls": [{"dataset": c.kind, "seed": c.seed, **c.control} for c in cells],
              "calibration": calibration, "rows": rows, "summary": summary, "winner": best.label,
              "latency": latency, "minutes": (time.perf_counter() - t_start) / 60}
    chart = report.plot_retention([e for e in summary if e["kind"] == "ours" or e["target"] == 2.0],
                                  Path(args.docs_images) / f"accuracy_{args.profile}.png",
                                  f"Retention vs speed-up ({args.profile}: {args.model}, {', '.join(datasets)}, "
                                  f"{args.seeds} seeds, 95% intervals)")
    result["chart"] = str(chart)
    result["headline"] = headline(result)
    write_results(args.out, f"accuracy_{args.profile}", result, markdown(result, datasets))
    print(result["headline"])
    return result


def calibrate(args, kind: str, data: str, test: str, work: Path, base: dict) -> dict:
    """Redundancy of the proxy: the half-width model trained from scratch the same way, against the proxy."""
    key = f"{kind}-narrow-{args.imgsz}px-{args.base_epochs[kind]}ep-seed0"
    path, minutes = train_from_scratch(str(NARROW), data, args, work / "baselines", key, 0, args.base_epochs[kind])
    narrow = test_map(path, test, args, work / "baselines" / key / "val")
    from rtdetr_prune.measure.counts import params_and_gflops

    g_full, g_narrow = (params_and_gflops(load_model(p), args.imgsz)[1] for p in (base["path"], path))
    return {"narrow_map50_95": narrow, "proxy_map50_95": base["map50_95"], "ratio": narrow / base["map50_95"],
            "gflops_ratio": g_full / g_narrow, "minutes": minutes}


def latency_side_by_side(args, cells, rows, best: Arm) -> dict | None:
    """Batch-8 latency of the baseline, the winner at 2x and the peers at 2x (seed 0 of the first dataset), timed
    interleaved in one process (ratios only; the machine's load is recorded with the results)."""
    from rtdetr_prune.bench import bench

    cell = cells[0]
    mine = {r["arm"]: r for r in rows if r["dataset"] == cell.kind and r["seed"] == cell.seed and r["target"] == 2.0}
    models = {"baseline": load_model(cell.baseline)}
    if best.label in mine:
        models[best.label] = load_model(Path(mine[best.label]["run_dir"]) / "weights" / "pruned_safe")
    for peer in ("tp_magnitude", "fastnas"):
        if peer in mine:
            models[peer] = load_model(Path(mine[peer]["run_dir"]) / "pruned.pt")
    if len(models) < 2:
        return None
    result = bench(models, batch=8, imgsz=640, backend="torch", device="cpu", warmup=1, repeats=5)
    return {"imgsz": 640, "batch": 8, "backend": "torch", "loadavg": os.getloadavg(),
            "rows": [{k: r[k] for k in ("model", "gflops", "latency_ms", "latency_ratio", "gflops_ratio")}
                     for r in result["rows"]]}


def _name(arm: Arm) -> str:
    return f"{arm.label.replace(' ', '_').replace('=', '-')}@{arm.target:g}x"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def _log(row: dict) -> dict:
    print(f"{row['dataset']} seed {row['seed']} {row['arm']} @{row['target']:g}x: speed-up {row['speed_up']:.2f}x, "
          f"mAP50-95 pruned {row['pruned_map50_95']:.3f} finetuned {row['finetuned_map50_95']:.3f}, retention "
          f"{row['retention']:.1%} ({row['seconds'] / 60:.1f} min)", flush=True)
    return row


def _settings(args) -> dict:
    s = {k: v for k, v in vars(args).items() if k not in ("out", "candidates")}
    s["candidates"] = [a.label for a in args.candidates]
    return s


def headline(result: dict) -> str:
    win = result["winner"]
    cells = [f"{e['arm']}@{e['target']:g}x {report.cell(e['overall'])}" for e in result["summary"]
             if e["arm"] == win or e["kind"] == "peer"]
    return (f"accuracy ({result['settings']['profile']}, {result['minutes']:.0f} min): default by the data = {win}; "
            + ", ".join(cells))


def _epochs_text(epochs: dict[str, int], datasets: list[str]) -> str:
    """"60", or "60 (shapes) / 120 (clutter)" where the datasets run differ."""
    counts = {k: epochs[k] for k in datasets}
    if len(set(counts.values())) == 1:
        return str(next(iter(counts.values())))
    return " / ".join(f"{n} ({k})" for k, n in counts.items())


def markdown(result: dict, datasets: list[str]) -> str:
    s = result["settings"]
    head = ["recipe", "target", "speed-up", *[f"retention {d}" for d in datasets], "retention (both)",
            "min/run"]
    rows = [[e["arm"] + (" (peer)" if e["kind"] == "peer" else ""), f"{e['target']:g}x", f"{e['speed_up']:.2f}x",
             *[report.cell(e["datasets"].get(d)) for d in datasets], report.cell(e["overall"]),
             f"{e['minutes']:.1f}"] for e in result["summary"]]
    base = [[k, f"{v['map50_95']:.3f}", f"{v['minutes']:.1f}"] for k, v in result["baselines"].items()]
    ctrl = [[c["dataset"], c["seed"], f"{c['baseline_map50_95']:.3f}", f"{c['map50_95']:.3f}"]
            for c in result["controls"]]
    parts = [
        f"## Accuracy benchmark ({s['profile']} profile)", "", md_machine(result["machine"]), "",
        f"Load average before {', '.join(f'{x:.1f}' for x in result['loadavg_before'])}, after "
        f"{', '.join(f'{x:.1f}' for x in result['loadavg_after'])}. Total {result['minutes']:.0f} minutes.", "",
        f"Model {s['model']} at {s['imgsz']} px, batch {s['batch']}, round_to {s['round_to']}; per dataset "
        f"{s['train']} train / {s['select']} select / {s['test']} test images; baselines "
        f"{_epochs_text(s['base_epochs'], datasets)} epochs "
        f"from scratch ({'one per seed' if s['baseline_per_seed'] else 'one per dataset, seed 0'}); every run and "
        f"the control train {s['epochs']} epochs in all (sparse methods: {s['sparse_epochs']} sparse + "
        f"{s['epochs'] - s['sparse_epochs']} finetune); iterative: {s['rounds']} rounds; seeds "
        f"{', '.join(str(i) for i in range(s['seeds']))}. Retention = finetuned mAP50-95 / control's (same seed), "
        "test split; mean ± 95% t-interval half-width over seeds (points).", "",
        f"**Default chosen by the data (most kept at 2x): {result['winner']}**", "",
        md_table(head, rows), "", "Baselines (test mAP50-95, minutes to train):", "",
        md_table(["baseline", "mAP50-95", "minutes"], base), "", "Controls:", "",
        md_table(["dataset", "seed", "baseline mAP50-95", "control mAP50-95"], ctrl),
    ]
    failed = [r for r in result["rows"] if "failed" in r]
    if failed:
        parts += ["", "Runs that failed:", ""] + [f"- {r['arm']} on {r['dataset']} seed {r['seed']}: {r['failed']}"
                                                  for r in failed]
    if result["latency"]:
        lat = result["latency"]
        parts += ["", f"Latency side by side (torch eager, batch {lat['batch']}, {lat['imgsz']} px, load "
                      f"{', '.join(f'{x:.1f}' for x in lat['loadavg'])}):", "",
                  md_table(["model", "GFLOPs", "ms/img", "latency ratio", "GFLOPs ratio"],
                           [[r["model"], f"{r['gflops']:.2f}", f"{r['latency_ms']:.1f}", f"{r['latency_ratio']:.3f}",
                             f"{r['gflops_ratio']:.3f}"] for r in lat["rows"]])]
    peers = {r["arm"]: r["peer"] for r in result["rows"] if r.get("peer")}
    if peers:
        parts += ["", "Peers (pruning wall time is on the first dataset's baseline):", ""]
        parts += [f"- {k}: {v['settings']}; {v['speed_up']:.3f}x in {v['seconds']:.0f} s" for k, v in peers.items()]
    if result["calibration"]:
        parts += ["", "Calibration (half-width proxy trained from scratch, same epochs):", "",
                  md_table(["dataset", "proxy mAP50-95", "half-width mAP50-95", "kept", "GFLOPs ratio"],
                           [[d, f"{c['proxy_map50_95']:.3f}", f"{c['narrow_map50_95']:.3f}", f"{c['ratio']:.1%}",
                             f"{c['gflops_ratio']:.2f}x"] for d, c in result["calibration"].items()])]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
