"""The ``resnet`` command line: one subcommand per job, errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resnet.errors import ResnetError
from resnet.model import list_models


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_summary_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("summary", help="print the torchinfo table of an architecture")
    p.add_argument("arch", choices=list_models(), metavar="ARCH", help=", ".join(list_models()))
    p.add_argument("--image-size", type=positive_int, nargs="+", default=[224], metavar="PX",
                   help="input height [width] (default 224)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--depth", type=positive_int, default=3, help="table depth (default 3)")
    p.set_defaults(run=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from resnet.summary import summary_table

    height, width = (args.image_size * 2)[:2]
    print(summary_table(args.arch, (args.batch_size, 3, height, width), args.num_classes, args.depth))
    return 0


def add_list_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list the architectures with parameters and GMACs")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    from resnet.summary import models_table

    print(models_table(args.image_size, args.num_classes))
    return 0


TRAIN_CHOICES = {
    "dataset": ("petals", "flowers102", "imagefolder"), "split": ("seed", "official"),
    "recipe": ("default", "seed"), "precision": ("auto", "fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda", "mps"), "pipeline": ("fast", "classic"), "schedule": ("cosine", "constant"),
}
TRAIN_TYPES = {"str": str, "int": int, "float": float, "str | None": str, "int | None": int}


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from resnet.config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train a model (defaults: the built-in petals dataset)",
        description="Train a ResNet. Every option overrides the recipe; options not given keep the "
                    "recipe's value (see resnet.config).")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "arch":
            p.add_argument(flag, choices=list_models(), default=None)
        else:
            p.add_argument(flag, type=TRAIN_TYPES[f.type], choices=TRAIN_CHOICES.get(f.name), default=None,
                           metavar=None if f.name in TRAIN_CHOICES else f.name.split("_")[-1].upper())
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resnet.config import resolve_config
    from resnet.train import Interrupted, resume_config, train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "run", "resume")}
    if args.resume:
        config = resume_config(Path(args.resume), overrides)
    else:
        config = resolve_config(overrides)
    try:
        train(config, Path(args.resume) if args.resume else None)
    except Interrupted as interrupted:
        print(f"resnet train: {interrupted}", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet", description="Train and use ResNet image classifiers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train_parser, add_list_parser, add_summary_parser):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ResnetError, ValueError, FileNotFoundError) as error:
        print(f"resnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
