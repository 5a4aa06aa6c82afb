"""Command line: ``rtdetr-prune <command> ...``. The only module that parses arguments.

Usage:
    rtdetr-prune check --model rtdetr-r18 [--imgsz 640] [--json]
    rtdetr-prune prune --model best.pt --data data.yaml --method lamp --speed-up 1.5 [--epochs 0]
    rtdetr-prune prune --config recipe.yaml --speed-up 2.0      # flags override the recipe

A mistake in the input prints one line (the problem and the fix) and exits with status 2;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rtdetr_prune.errors import UserError
from rtdetr_prune.recipe import Recipe, default, help_line, validate

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        _quiet_ultralytics(errors_only=getattr(args, "json", False))
    try:
        from rtdetr_prune.pruning.rules import load_plugin

        for path in args.plugin:
            load_plugin(path)
        return args.func(args) or 0
    except UserError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept in the run directory", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, with the nearest valid option suggested for a mistyped one."""

    def error(self, message: str):
        if "unrecognized arguments" in message:
            from rtdetr_prune.errors import suggest

            known = _all_options(self)
            wrong = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            message += "".join(suggest(w.split("=")[0], known) for w in wrong[:1])
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and its subcommands (argparse reports unknown ones at the top)."""
    found = []
    for action in parser._actions:
        found += [o for o in action.option_strings if o not in ("-h", "--help")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_options(sub)
    return found


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show progress logs and full tracebacks")
    common.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file defining your own modules and their pruning rules (repeatable)")
    p = _Parser(prog="rtdetr-prune", description="Prune and finetune RT-DETR detectors.", parents=[common])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", parents=[common], help="can this model be pruned, and how far?")
    _recipe_flags(c, "model", "imgsz", "round_to", "max_layer_ratio", "decoder_parts", "decoder_layers",
                  required=("model",))
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    c.set_defaults(func=_cmd_check)

    r = sub.add_parser("prune", parents=[common], help="prune to a target speed-up, then finetune")
    r.add_argument("--config", help="recipe YAML (a run's recipe.yaml works); flags override it")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its first unfinished stage")
    _recipe_flags(r, *Recipe.keys(), overrides_only=True)
    r.set_defaults(func=_cmd_prune)

    v = sub.add_parser("val", parents=[common], help="mAP50 and mAP50-95 on the data's val split")
    _recipe_flags(v, "model", "data", "imgsz", "batch", "device", "workers", required=("model", "data"))
    v.set_defaults(func=_cmd_val)

    d = sub.add_parser("data", parents=[common], help="make or convert datasets (YOLO format)")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    ds = dsub.add_parser("synthetic", parents=[common], help="write a deterministic synthetic shapes dataset")
    ds.add_argument("--out", required=True, help="output directory (data.yaml, images/, labels/)")
    ds.add_argument("--images", type=int, default=96, help="number of images, split 3:1 into train and val (default 96)")
    ds.add_argument("--imgsz", type=int, default=160, help="image side, pixels (default 160)")
    ds.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    ds.set_defaults(func=_cmd_data_synthetic)
    dc = dsub.add_parser("convert", parents=[common], help="convert VisDrone, CrowdHuman, VOC or COCO to YOLO")
    dc.add_argument("--format", required=True, dest="fmt", help="visdrone | crowdhuman | voc | coco")
    dc.add_argument("src", help="the dataset as downloaded")
    dc.add_argument("dst", help="output directory (YOLO format + data.yaml)")
    dc.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="format option, e.g. --opt box=vbox (crowdhuman), --opt keep_difficult=true (voc)")
    dc.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    dc.set_defaults(func=_cmd_data_convert)

    b = sub.add_parser("bench", parents=[common], help="latency per image of models, timed side by side")
    b.add_argument("--model", action="append", required=True,
                   help="a model (repeat the flag: the first is the reference for ratios)")
    b.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8, as in the seed's tables)")
    _recipe_flags(b, "imgsz")
    b.add_argument("--backend", default="torch", help="torch (eager PyTorch) or onnxruntime (exported and checked "
                   "against PyTorch first) (default: torch)")
    b.add_argument("--device", default="cpu", help='"cpu", "cuda" or "cuda:N" (default: cpu)')
    b.add_argument("--half", action="store_true", help="time in fp16 (CUDA only)")
    b.add_argument("--repeats", type=int, default=10, help="timed rounds, models interleaved in each; more gives "
                   "steadier medians (default 10)")
    b.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    b.add_argument("--json", action="store_true", help="print JSON instead of the table")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", parents=[common], help="train a baseline (zoo name or RT-DETR .yaml) from scratch")
    t.add_argument("--model", required=True, help="zoo name (rtdetr-r18...) or RT-DETR .yaml")
    _recipe_flags(t, "data", "imgsz", "batch", "device", "workers", "name", "seed", required=("data",))
    t.add_argument("--epochs", type=int, default=100, help="training epochs (default 100); RT-DETR trains slowly")
    t.add_argument("--project", default="runs/train", help="runs go to PROJECT/NAME (default: runs/train)")
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("demo", parents=[common], help="the whole pipeline on built-in synthetic data")
    m.add_argument("--project", default="runs/demo", help="where the demo's data and run go (default: runs/demo)")
    m.add_argument("--epochs", type=int, default=30, help="finetune epochs (default 30)")
    m.set_defaults(func=_cmd_demo)

    k = sub.add_parser("compare", parents=[common], help="merge pruning runs into one table (markdown + CSV)")
    k.add_argument("runs", nargs="+", help="run directories")
    k.add_argument("--out", default=None, help="where to write compare.md and compare.csv (default: here)")
    k.set_defaults(func=_cmd_compare)
    return p


def _recipe_flags(parser: argparse.ArgumentParser, *names: str, required: tuple[str, ...] = (),
                  overrides_only: bool = False) -> None:
    """One flag per recipe option (``speed_up`` -> ``--speed-up``), typed and explained by the recipe.

    With ``overrides_only`` every default is None, so that only the flags given override a --config recipe.
    """
    for name in names:
        flag, value = "--" + name.replace("_", "-"), default(name)
        text = help_line(name).replace("%", "%%")  # argparse formats help with %
        if name in required:
            parser.add_argument(flag, required=True, type=type(value), help=text)
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None if overrides_only else value,
                                help=text)
        else:
            parser.add_argument(flag, type=type(value), default=None if overrides_only else value, help=text)


def _cmd_check(args) -> int:
    from rtdetr_prune.models import load_model
    from rtdetr_prune.pruning.analysis.check import check_model, format_check

    _check_imgsz(args.imgsz)
    result = check_model(load_model(args.model), args.imgsz, args.round_to, args.max_layer_ratio,
                         decoder_parts=args.decoder_parts, decoder_layers=args.decoder_layers)
    result["model"] = args.model
    print(json.dumps(result, indent=2) if args.json else format_check(result))
    return 0


def _cmd_prune(args) -> int:
    from rtdetr_prune.pipeline import prune
    from rtdetr_prune.recipe import load_recipe

    flags = {k: v for k, v in vars(args).items() if k in Recipe.keys() and v is not None}
    if args.resume and (flags or args.config):
        raise UserError("--resume continues a run with the options it was started with; drop the other options.")
    report = prune(load_recipe(args.config, flags), resume=args.resume)
    from rtdetr_prune.report import stage_table

    print(stage_table(report))
    print(f"\nrun directory: {report['run_dir']}")
    return 0


def _cmd_val(args) -> int:
    from rtdetr_prune.data.yolo import load_data, require_same_classes
    from rtdetr_prune.measure import counts as metrics
    from rtdetr_prune.measure.stage import val_map
    from rtdetr_prune.models import load_model

    validate(args, ["imgsz", "batch", "workers"])
    data = load_data(args.data)
    model = load_model(args.model)
    require_same_classes(model, data, args.data)
    m50, m5095 = val_map(model, args.data, args.imgsz, args.batch, args.device, args.workers)
    params, flops = metrics.params_and_gflops(model, args.imgsz)
    print(f"mAP50 {m50:.4f}  mAP50-95 {m5095:.4f}  params {params:,}  GFLOPs@{args.imgsz} {flops:.2f}")
    return 0


def _cmd_data_synthetic(args) -> int:
    from rtdetr_prune.data import make_synthetic

    print(make_synthetic(args.out, images=args.images, imgsz=args.imgsz, seed=args.seed))
    return 0


def _cmd_data_convert(args) -> int:
    from rtdetr_prune.data import convert_dataset

    opts = {}
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--opt takes KEY=VALUE (got '{item}'), e.g. --opt box=vbox.")
        opts[key] = {"true": True, "false": False}.get(value.lower(), value)
    print(convert_dataset(args.fmt, args.src, args.dst, overwrite=args.overwrite, **opts))
    return 0


def _cmd_bench(args) -> int:
    from rtdetr_prune.bench import bench, format_bench

    _check_imgsz(args.imgsz)
    result = bench(args.model, batch=args.batch, imgsz=args.imgsz, backend=args.backend, device=args.device,
                   half=args.half, warmup=args.warmup, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _cmd_train(args) -> int:
    from rtdetr_prune.data.yolo import load_data
    from rtdetr_prune.models.ultralytics.trainer import train_baseline
    from rtdetr_prune.recipe import check_device

    validate(args, ["imgsz", "batch", "workers", "project", "name", "seed", "epochs"])
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1 to train (got {args.epochs}).")
    check_device(args.device)
    load_data(args.data)
    trainer = train_baseline(args.model, args.data, args.epochs, args.imgsz, args.batch, args.device, args.workers,
                             args.project, args.name, args.seed)
    print(f"trained: {trainer.best if trainer.best.is_file() else trainer.last}")
    return 0


def _cmd_demo(args) -> int:
    import time

    from rtdetr_prune.demo import run_demo
    from rtdetr_prune.report import stage_table

    validate(args, ["epochs"])  # before the demo writes its data
    start = time.time()
    report = run_demo(args.project, epochs=args.epochs)
    print(stage_table(report))
    print(f"\nrun directory: {report['run_dir']}  (wall time {time.time() - start:.0f} s)")
    return 0


def _cmd_compare(args) -> int:
    from rtdetr_prune.report import write_compare

    print(write_compare(args.runs, args.out))
    return 0


def _check_imgsz(imgsz: int) -> None:
    validate(argparse.Namespace(imgsz=imgsz))


def _quiet_ultralytics(errors_only: bool = False) -> None:
    """Ultralytics logs every model build and validation to stdout; keep our output readable unless
    --verbose, and keep stdout pure JSON with --json."""
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.ERROR if errors_only else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
