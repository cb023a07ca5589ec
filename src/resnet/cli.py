"""The ``resnet`` command line: one subcommand per job, errors as one line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from resnet.config import CHOICES, flag
from resnet.errors import ResnetError
from resnet.models.resnet import STEMS, list_models
from resnet.words import plural

STEM_HELP = ("imagenet (7x7 stride 2, max-pool; the default) | small (3x3 stride 1, no max-pool: images of ~32 px) | "
             "small-pool (3x3 stride 1, then the max-pool: a quarter of small's cost)")


# The types of the options that no options object checks (summary, list, bench, serve, check).
# eval, calibrate and predict check theirs in resnet.tools.options, train and lr-find in
# resnet.config.validate (and lrfind.check_range): their types here only convert.
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def add_summary_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("summary", help="print the torchinfo table of an architecture")
    p.add_argument("arch", choices=list_models(), metavar="ARCH", help=", ".join(list_models()))
    p.add_argument("--image-size", type=positive_int, nargs="+", default=[224], metavar="PX",
                   help="input height [width] (default 224)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--depth", type=positive_int, default=3, help="table depth (default 3)")
    p.add_argument("--stem", choices=STEMS, default="imagenet", help=STEM_HELP)
    p.set_defaults(run=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from resnet.tools.summary import summary_table

    height, width = (args.image_size * 2)[:2]
    print(summary_table(args.arch, (args.batch_size, 3, height, width), args.num_classes, args.depth, args.stem))
    return 0


def add_list_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list the architectures with parameters and GMACs")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--stem", choices=STEMS, default="imagenet", help=STEM_HELP)
    p.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    from resnet.tools.summary import models_table

    print(models_table(args.image_size, args.num_classes, args.stem))
    return 0


TRAIN_TYPES = {"str": str, "int": int, "float": float, "str | None": str, "int | None": int, "float | None": float}


def learning_rate(text: str) -> float | str:
    """--lr: a number, or ``auto`` (the range test's suggestion, found before the run)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, got {text!r}") from None


def add_config_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """An option for each field of the run's config (its help, type and choices), but those in ``skip``."""
    from dataclasses import fields

    from resnet.config import TrainConfig
    from resnet.helptext import field_help

    for f in fields(TrainConfig):
        text = field_help(f)
        if f.name in skip:
            continue
        if f.type == "bool":
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "arch":
            p.add_argument(flag(f.name), choices=list_models(), default=None, help=text)
        elif f.name == "lr":
            p.add_argument(flag(f.name), type=learning_rate, default=None, metavar="LR",
                           help=field_help(f, "; auto: the suggestion of a range test (resnet lr-find) run first, "
                                              "its plot in RUN_DIR/lr_find.png, the number in config.json"))
        else:
            p.add_argument(flag(f.name), type=TRAIN_TYPES[f.type], choices=CHOICES.get(f.name), default=None,
                           help=text, metavar=None if f.name in CHOICES else f.name.split("_")[-1].upper())


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from resnet.helptext import train_description

    p = subparsers.add_parser("train", help="train a model (defaults: the built-in petals dataset)",
                              description=train_description())
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/last.pt (default: start a new run)")
    add_config_options(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from resnet.engine.training import Interrupted, train_with_options

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "run", "resume")}
    try:
        train_with_options(overrides, args.resume or None)
    except Interrupted as interrupted:
        print(f"resnet train: {interrupted}", file=sys.stderr)
        return interrupted.exit_status
    return 0


def add_lr_find_parser(subparsers: argparse._SubParsersAction) -> None:
    from resnet.engine.lrfind import END_LR, START_LR, STEPS

    p = subparsers.add_parser(
        "lr-find", help="the learning-rate range test: the loss against the lr, and a suggested lr",
        description="The range test (Smith, 2017) as fastai's lr_find runs it: the run that the train options "
                    "describe trains from its initial weights, with its step and data, while the lr grows "
                    "exponentially from --start-lr to --end-lr over --steps steps, until the smoothed loss "
                    "diverges (over 4 times its lowest) or is not finite. Writes DIR/lr_find.png (the smoothed "
                    "loss against the lr, the suggestion marked) and DIR/lr_find.csv, and prints the suggested "
                    "lr (fastai's valley rule); the model is thrown away. resnet train --lr auto runs it first.")
    p.add_argument("--out", dest="find_out", required=True, metavar="DIR", help="where lr_find.png and lr_find.csv go")
    p.add_argument("--steps", type=int, default=STEPS,
                   help=f"steps of the test, over as many epochs as they take (default {STEPS})")
    p.add_argument("--start-lr", type=float, default=START_LR, metavar="LR",
                   help=f"the first lr (default {START_LR:g})")
    p.add_argument("--end-lr", type=float, default=END_LR, metavar="LR", help=f"the last lr (default {END_LR:g})")
    add_config_options(p, skip=("lr", "out"))
    p.set_defaults(run=run_lr_find)


def run_lr_find(args: argparse.Namespace) -> int:
    from resnet.engine.assembly import train_config
    from resnet.engine.lrfind import check_folder, check_range, lr_find_command

    check_range(args.steps, args.start_lr, args.end_lr)  # before the line the training defaults may print
    check_folder(Path(args.find_out))
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "run", "find_out", "steps", "start_lr", "end_lr")}
    config = train_config(overrides)
    lr_find_command(config, args.find_out, args.steps, args.start_lr, args.end_lr)
    return 0


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir and --split of the commands that score a checkpoint on a dataset,
    the checkpoint's own by default (eval, calibrate)."""
    p.add_argument("--dataset", choices=CHOICES["dataset"], default=None, help="default: the checkpoint's dataset")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="default: the checkpoint's data folder")
    p.add_argument("--split", choices=CHOICES["split"], default=None,
                   help="flowers102 split scheme; default: the checkpoint's")


def add_run_options(p: argparse.ArgumentParser, batch_size: int, workers: bool = True) -> None:
    """--batch-size, --workers (for the commands that decode a dataset) and --device of the
    commands that run a checkpoint (eval, calibrate, predict); their values are checked with
    the command's options (resnet.tools.options), so the types here only convert."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    if workers:
        p.add_argument("--workers", type=int, default=None,
                       help="image decoding processes (default: one per CPU this process may use)")
    p.add_argument("--device", choices=CHOICES["device"], default="auto")


def options_from(args: argparse.Namespace, kind: type) -> Any:
    """The options object ``kind`` (a dataclass) of a command, from its parsed arguments."""
    from dataclasses import fields

    return kind(**{f.name: getattr(args, f.name) for f in fields(kind)})


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="score a checkpoint: loss, top-1/5, macro-F1, balanced accuracy, per-class scores, confusion",
        description="Evaluate a checkpoint (or a run directory's best.pt) on the dataset and split it was "
                    "trained on, or on another one. Writes confusion_matrix.png, per_class.csv, "
                    "reliability.png (calibration: accuracy against confidence) and coverage.png "
                    "(accuracy against the share of images answered, as --min-confidence rises).")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    add_data_options(p)
    p.add_argument("--subset", choices=("eval", "test", "train", "all"), default="eval",
                   help="which images of the split to score (default eval: the run's validation images; "
                        "all: every image, e.g. a separate test folder)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the PNG and CSV go (default: the checkpoint's folder)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="evaluation resize (default: the run's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its mirror image's (default: as the run did)")
    add_run_options(p, batch_size=64)
    p.add_argument("--mistakes", type=int, default=16, metavar="N",
                   help="show the N most confident mistakes in mistakes.png (default 16; 0: no PNG)")
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="also report the coverage (the share of images whose top probability is at least P) "
                        "and the top-1 accuracy on them; coverage.png shows every P")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import json

    from resnet.tools.evaluation import evaluate_checkpoint, format_eval
    from resnet.tools.options import EvalOptions

    result = evaluate_checkpoint(args.checkpoint, options_from(args, EvalOptions))
    print(json.dumps(result) if args.json else format_eval(result))
    return 0


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="fit a temperature on held-out images, so that probabilities mean what they say",
        description="Temperature scaling (Guo et al., 2017): fit one T > 0 that minimizes the NLL of "
                    "softmax(logits / T) on the run's evaluation images (never the test split), and store it "
                    "in best.pt, last.pt and config.json. Rankings do not change; resnet eval, predict, "
                    "serve and export then give the calibrated probabilities. Prints ECE before and after.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run directory (its best.pt and last.pt) or one checkpoint file")
    p.add_argument("--subset", choices=("eval", "val", "train", "test", "all"), default="eval",
                   help="the images to fit on: eval (or val), the run's held-out validation images; "
                        "test, train and all are refused")
    add_data_options(p)
    add_run_options(p, batch_size=64)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    import json

    from resnet.tools.calibrate import calibrate_run, format_calibration
    from resnet.tools.options import DataOptions

    result = calibrate_run(args.checkpoint, options_from(args, DataOptions))
    print(json.dumps(result) if args.json else format_calibration(result))
    return 0


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="top-k classes of images, with probabilities",
        description="Classify image files (a directory means every image file under it). An unreadable "
                    "file is reported on stderr, the others are still predicted, and the exit status is 1.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run directory")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument("--csv", action="store_true", help="print CSV: path,rank,class,probability")
    add_run_options(p, batch_size=32, workers=False)
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="answer unknown for an image whose top probability is below P (the top classes are "
                        "still shown); resnet eval --min-confidence P says how many that leaves unknown")
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    import csv
    import json

    from resnet.tools.options import PredictOptions
    from resnet.tools.prediction import ANSWER_COLUMNS, CSV_COLUMNS, csv_rows, format_text, predict_checkpoint, \
        prediction_report

    checkpoint, predictions = predict_checkpoint(args.checkpoint, args.inputs, options_from(args, PredictOptions))
    columns = CSV_COLUMNS + (ANSWER_COLUMNS if args.min_confidence is not None else ())
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n") if args.csv else None
    if writer:
        writer.writeheader()
    kept, failed = [], 0  # --json prints them all at the end; the other outputs as they come
    for prediction in predictions:
        if args.json:
            kept.append(prediction)
        if prediction.error is not None:
            failed += 1
            print(f"resnet predict: {prediction.path}: {prediction.error}", file=sys.stderr)
        elif writer:
            writer.writerows(csv_rows(prediction))
        elif not args.json:
            print(format_text(prediction))
        sys.stdout.flush()
    if args.json:
        print(json.dumps(prediction_report(checkpoint, kept, args.min_confidence)))
    return 1 if failed else 0


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript, checked against PyTorch",
        description="Export with a dynamic batch axis; class names and preprocessing go into the file's "
                    "metadata. The exported model is run against PyTorch on random input.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run directory")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="default: next to the checkpoint, as <name>.onnx / <name>.torchscript.pt")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed |exported - PyTorch| (default 1e-3)")
    from resnet.tools.quantize import add_int8_arguments

    add_int8_arguments(p)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from resnet.tools.export import export_checkpoint
    from resnet.tools.quantize import INT8_OPTIONS, run_int8_export

    if args.int8 or any(getattr(args, name) is not None for name in INT8_OPTIONS):
        return run_int8_export(args)
    result = export_checkpoint(args.checkpoint, args.format, args.out, args.tolerance)
    print(f"wrote {result['out']} ({args.format}, {result['bytes'] / 1e6:.1f} MB, {result['arch']}, "
          f"{plural(result['classes'], 'class')}, input (N, 3, {result['image_size']}, {result['image_size']}))")
    print(f"max |{args.format} - pytorch| = {result['max_abs_diff']:.3g} on a random batch of {result['check_batch']}")
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    import os

    from resnet.tools.bench import BenchOptions

    d = BenchOptions()
    p = subparsers.add_parser(
        "bench", help="training throughput: the original tutorial's pipeline (per-image PIL transforms) against "
                      "ours, model only, data only",
        description="Measure end-to-end training images/s of the original tutorial's pipeline (per-image PIL "
                    "transforms in DataLoader workers) and ours on the same "
                    "JPEGs (alternating rounds, median), the model-only step for each precision and memory "
                    "format, and the data pipelines alone. Without --data-dir it generates JPEGs offline.")
    p.add_argument("--arch", choices=list_models(), default=d.arch)
    p.add_argument("--image-size", type=positive_int, default=d.image_size, metavar="PX")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"timed steps per round (default {d.steps})")
    p.add_argument("--warmup", type=positive_int, default=d.warmup,
                   help=f"untimed steps before each timed round (default {d.warmup})")
    p.add_argument("--rounds", type=positive_int, default=d.rounds,
                   help=f"alternating rounds per pipeline; the median is reported (default {d.rounds})")
    p.add_argument("--data-dir", metavar="DIR", help="a folder holding flowers-102/ (Flowers102 split 'test', the "
                   "images the original tutorial trains on) or an image folder (DIR/<class>/...); default: "
                   "generated JPEGs")
    p.add_argument("--images", type=positive_int, default=d.images,
                   help=f"images generated, or the size of the fixed random subset of --data-dir (default {d.images})")
    p.add_argument("--generated-size", type=positive_int, default=d.generated_size, metavar="PX",
                   help=f"shorter side of the generated JPEGs (default {d.generated_size}, as Flowers-102's "
                        "original JPEGs)")
    p.add_argument("--workers", type=nonnegative_int, default=min(16, os.cpu_count() or 1),
                   help="DataLoader workers of the per-image PIL pipeline and of our decode (default: cpus, at "
                        "most 16)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=d.device)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=d.precision,
                   help="our pipeline's autocast precision (default auto); the per-image PIL pipeline's is fp32")
    p.add_argument("--recipe", choices=("tutorial", "default"), default=d.recipe,
                   help="our augmentation: tutorial (the original tutorial's transforms: rotation, random-resized "
                        "crop, both flips; the default) or the default recipe's")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--compile", action="store_true",
                   help="also time the model-only step under torch.compile: compile seconds and images/s")
    p.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default=d.cuda_graphs,
                   help="on CUDA: also time the model-only step as a CUDA graph at each precision, and run our "
                        "end-to-end steps as one (auto and on; default auto); off: eager only")
    p.add_argument("--note", default="", help="a remark stored with the results")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--out", metavar="FILE", help="also save the JSON to FILE")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from resnet.tools.bench import BenchOptions, run

    options = BenchOptions(**{f.name: getattr(args, f.name) for f in fields(BenchOptions)})
    run(options, as_json=args.json, out=args.out)
    return 0


def add_explain_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="Grad-CAM overlays: where in each image the evidence for a class is",
        description="Write OUT/<stem>.cam.png per image: the Grad-CAM map of the top class (or --class) over "
                    "the image as the model sees it, titled with the class and its probability. Needs the "
                    'CAM library: pip install -e ".[app]".')
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="where the overlays go")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="explain this class instead of the predicted one")
    p.add_argument("--layer", default="layer4", help="the layer whose maps are weighted (default layer4)")
    p.set_defaults(run=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    from resnet.tools.explain import explain_files

    failed = 0
    for image, result in explain_files(args.checkpoint, args.inputs, args.out, args.class_name, args.layer):
        if isinstance(result, str):
            failed += 1
            print(f"resnet explain: {image}: {result}", file=sys.stderr)
        else:
            print(f"{image} -> {result}")
    return 1 if failed else 0


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="a local web app: classify your images with Grad-CAM, browse runs",
        description="Start a Gradio app on this machine: Classify (top-5 and a Grad-CAM overlay for uploaded "
                    "images, as resnet predict computes them) and Runs (config, metrics, curves, confusion, "
                    'mistakes of every run). Needs pip install -e ".[app]". No authentication: it listens '
                    "on 127.0.0.1 unless --host says otherwise.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="runs to offer (the first is classified with)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="every run under DIR is listed (default runs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=positive_int, default=7860)
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from resnet.tools.app import serve

    serve(args.runs, args.runs_dir, args.host, args.port)
    return 0


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    from resnet.tools.check import ASPECT_LIMIT, BOTH_MAX, PHASH_MAX

    p = subparsers.add_parser(
        "check", help="a dataset's health report: duplicates, leaks between splits, unreadable files",
        description="Read every image of a dataset once, in parallel, and report: class counts per split, "
                    "unreadable files, exact duplicates (same bytes), near duplicates (the same photo resized, "
                    "re-compressed or slightly cropped: imagehash's pHash, confirmed by dHash when it is not "
                    "close on its own), leaks (a duplicate in two splits, or under two classes), images "
                    f"smaller than the training size, odd modes and aspect ratios beyond {ASPECT_LIMIT:g}:1. "
                    "Exit status 1 when there is a leak or an unreadable file, 0 when there is none, 2 for "
                    "bad input. What each file gave is kept in the decode cache's folder (RESNET_CACHE), so "
                    'a second check reads only new and changed files. Needs pip install "resnet-lab[check]".')
    p.add_argument("data_dir", metavar="DIR", help="the data folder (as train's --data-dir)")
    p.add_argument("--dataset", choices=CHOICES["dataset"], default="imagefolder",
                   help="default imagefolder; flowers102 checks its train, val and test splits")
    p.add_argument("--labels", default=None, metavar="FILE", help="a label file for the image folder")
    p.add_argument("--val-fraction", type=float, default=None, metavar="FRACTION",
                   help="for DIR/<class>/...: the held-out share, as train's (default: train's default)")
    p.add_argument("--seed", type=int, default=None, help="the seed of that split (default: train's default)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="PX",
                   help="report images whose shorter side is below this (default: the dataset's training size)")
    p.add_argument("--phash-distance", type=nonnegative_int, default=PHASH_MAX, metavar="BITS",
                   help=f"near when pHashes differ in at most this many of 64 bits (default {PHASH_MAX})")
    p.add_argument("--both-distance", type=nonnegative_int, default=BOTH_MAX, metavar="BITS",
                   help=f"or when pHashes and dHashes each differ in at most this many (default {BOTH_MAX})")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="reading processes (default: one per CPU this process may use)")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write DIR/report.json and DIR/index.html, thumbnails of every duplicate and leak")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    import json

    from resnet.tools.check import CheckOptions, check_dataset, exit_status, format_report
    from resnet.util.signals import Stopped, StopSignals

    options = CheckOptions(dataset=args.dataset, data_dir=args.data_dir, labels=args.labels,
                           val_fraction=args.val_fraction, seed=args.seed, image_size=args.image_size,
                           phash_max=args.phash_distance, both_max=args.both_distance, workers=args.workers,
                           progress=not args.quiet, out=args.out)
    try:
        with StopSignals():
            report = check_dataset(options)
    except Stopped as stopped:
        print(f"resnet check: stopped by {stopped.name}", file=sys.stderr)
        return stopped.exit_status
    print(json.dumps(report) if args.json else format_report(report))
    return exit_status(report)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that says where the full usage is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from resnet.version import __version__

    parser = Parser(prog="resnet", description="Train and use ResNet image classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_train_parser, add_eval_parser, add_calibrate_parser, add_predict_parser, add_export_parser,
                add_list_parser, add_summary_parser, add_bench_parser, add_explain_parser, add_serve_parser,
                add_check_parser, add_lr_find_parser):
        add(subparsers)
    return parser


@contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """Warnings printed as ``resnet <command>: warning: ...``: the source line that
    raised them means nothing to the user."""
    original = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"resnet {command}: warning: {message}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = original


def main(argv: Sequence[str] | None = None) -> int:
    """The ``resnet`` command. A ``ResnetError`` (bad input) becomes one line on stderr and
    exit status 2; any other exception is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # A file name that is not valid UTF-8 is printed as the bytes it has, as ls does.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    with warnings_as_lines(args.command):
        try:
            return args.run(args)
        except ResnetError as error:
            print(f"resnet {args.command}: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"resnet {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return reader_gone()


def reader_gone() -> int:
    """stdout's reader closed it (``resnet eval RUN | head -1``): stop quietly, as a
    command killed by SIGPIPE would, with nothing more written to the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
