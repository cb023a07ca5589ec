"""CIFAR-10 from scratch on a held-out part of its training images: time to accuracy.

    python benchmarks/cifar10.py --source DATA/cifar-10/train       # the plain command
    python benchmarks/cifar10.py --source DATA/cifar-10/train --name small-pool-3ep --args "--stem small-pool ..."
    python benchmarks/cifar10.py --source DATA/cifar-10/train --quick   # 20 images a class: to try it

**The set.** ``--source`` (required), CIFAR-10's training images as ``<class>/`` folders, such as
``DATA/cifar-10/train``: its 50,000 training images (there JPEG re-encodings; the 10,000 test
images are not there). 500 images of every class are held out
as ``val/`` by the same seeded permutation as ``benchmarks/cifar10_lt.py`` (so the two scripts
evaluate on the same 5,000 images), the other 4,500 of each class are ``train/``: 45,000 / 5,000,
symlinks under ``--work``. Everything is tuned on ``val/``; the figure on CIFAR-10's official
test images is measured elsewhere.

**A run.** ``resnet train --dataset imagefolder --data-dir DIR --out RUN ARGS``, the whole command
timed (wall clock, from a cold decoded cache unless ``--warm``), with ``RESNET_CACHE`` under
``--work``. Its config.json, metrics.csv, curves.png, summary.json and the log go to
``benchmarks/results/cifar10-NAME/`` with ``result.json``: the command, the wall time, the
final and best top-1 on val, and the time to 80/85/90% top-1 (the training time up to the first
epoch that reached it, from metrics.csv, plus the start-up before the first epoch). Run it with
nothing else on the machine (or pinned, and say so: ``--note``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_lt import CLASSES, build_set, machine, run_logged, tail  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = (0.80, 0.85, 0.90, 0.93)
KEPT = ("config.json", "metrics.csv", "curves.png", "summary.json")


def describe_set(source: Path, held_out: int, per_class: int, seed: int) -> dict[str, Any]:
    """The set as ``cifar10_lt.build_set`` makes it: the held-out part first, then the training part."""
    return {"source": str(source), "classes": list(CLASSES), "held_out_per_class": held_out,
            "train_per_class": [per_class] * len(CLASSES), "data_seed": seed, "version": 1}


def time_to(history: list[dict[str, str]], startup: float) -> dict[str, float | None]:
    """Seconds from the command's start to the end of the first epoch at each top-1 threshold."""
    reached: dict[str, float | None] = {f"{t:.2f}": None for t in THRESHOLDS}
    elapsed = startup
    for row in history:
        elapsed += float(row["seconds"])
        top1 = float(row["top1"]) if row.get("top1") else None
        for t in THRESHOLDS:
            if top1 is not None and top1 >= t and reached[f"{t:.2f}"] is None:
                reached[f"{t:.2f}"] = round(elapsed, 1)
    return reached


def run(name: str, data: Path, work: Path, extra: list[str], warm: bool, note: str, results: Path) -> dict[str, Any]:
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    if not warm:
        shutil.rmtree(work / "cache", ignore_errors=True)
    env = {**os.environ, "RESNET_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "resnet", "train", "--dataset", "imagefolder", "--data-dir", str(data),
               "--out", str(out), *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = work / "runs" / f"{name}.log"
    status, wall = run_logged(command, log, env)
    result: dict[str, Any] = {"name": name, "command": shlex.join(command), "exit_status": status,
                              "wall_seconds": round(wall, 1), "cold_cache": not warm, "note": note,
                              "date": datetime.now().strftime("%Y-%m-%d"), "machine": machine()}
    if status != 0:
        return {**result, "log_tail": tail(log)}
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    startup = wall - summary["seconds"]  # decode, model, the test split: all that is not an epoch
    result.update(epochs=summary["epochs"], final_top1=summary["final_top1"], best_top1=summary["best_top1"],
                  train_seconds=round(summary["seconds"], 1), time_to_top1=time_to(history, startup))
    folder = results / f"cifar10-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for kept in KEPT:
        shutil.copy(out / kept, folder / kept)
    shutil.copy(log, folder / "train.log")
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="plain", help="the run's name: results go to results/cifar10-NAME")
    p.add_argument("--args", default="", help="resnet train options after --data-dir (default: none)")
    p.add_argument("--quick", action="store_true", help="20 training / 5 held-out images a class")
    p.add_argument("--warm", action="store_true", help="keep the decoded cache of an earlier run")
    p.add_argument("--note", default="", help="how it was run (pinned, alone...), kept in result.json")
    p.add_argument("--source", type=Path, required=True,
                   help="CIFAR-10's training images as <class>/ folders, e.g. DATA/cifar-10/train")
    p.add_argument("--work", type=Path, default=Path("runs/cifar10"), help="the set, runs and cache")
    p.add_argument("--results", type=Path, default=None,
                   help="where results/cifar10-NAME goes (default: benchmarks/results, or under --work with --quick)")
    args = p.parse_args(argv)
    if not args.source.is_dir():
        p.error(f"--source {args.source}: not a folder (CIFAR-10's training images as <class>/ folders)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    held_out, per_class = (5, 20) if args.quick else (500, 4500)
    work = args.work.resolve() / ("quick" if args.quick else "full")
    build_set(work / "data", describe_set(args.source.resolve(), held_out, per_class, 0))
    start = time.perf_counter()
    results = args.results or (work / "results" if args.quick else RESULTS)
    result = run(args.name, work / "data", work, shlex.split(args.args), args.warm, args.note, results)
    print(json.dumps(result, indent=2))
    print(f"{time.perf_counter() - start:.0f} s in all")
    return 0 if result["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
