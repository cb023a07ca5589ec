"""CIFAR-10-LT: ``resnet train --balance none``, ``loss`` and ``sampler`` at the same budget.

    python benchmarks/cifar10_lt.py --source DATA/cifar-10/train           # three runs of 30 epochs
    python benchmarks/cifar10_lt.py --source DATA/cifar-10/train --epochs 60 --seeds 0 1 \
        --extra-args "--image-size 32 --lr 0.05"
    python benchmarks/cifar10_lt.py --source DATA/cifar-10/train --quick   # 100 head images, 1 epoch: to try it

**The set.** The long-tail protocol of Cao et al. (LDAM-DRW, NeurIPS 2019): imbalance ratio 100,
class i (0-based, in CIFAR-10's order airplane, automobile, ..., truck, which is also the folders'
alphabetical order) keeps n_i = int(n_max * (1/100)^(i/9)) training images. The source
(``--source``, required) is CIFAR-10's training images as ``<class>/`` folders, such as
``DATA/cifar-10/train``: its 50,000 training images only (there JPEG re-encodings; the 10,000 test
images are not there), 5,000 a class.

**The evaluation part, held out first.** Before any training image is chosen, 500 images of every
class (5,000 in all, balanced) are held out, chosen per class by a seeded permutation (``--data-seed``);
the long-tailed training part is then the next n_i images of the same permutation, disjoint from it.
A class has 4,500 images left, so the profile is scaled to n_max = 4,500: 4,500 at the head, 45 at
the tail (ratio 100, 11,165 images; the paper's 5,000 to 50, 12,406 images, would need all 5,000 of
a class). Balanced, the held-out part weighs each class alike: its top-1 is its balanced
accuracy (macro-F1 still differs). It is part of CIFAR-10's training set, not its test set: the figures are
not comparable with published CIFAR-10-LT ones (on the 10,000 original test images).

The set is a folder of symlinks to the source files (``DIR/train/<class>``, ``DIR/val/<class>``),
made once under ``--work`` (remade when its description changes). Each run is

    resnet train --dataset imagefolder --data-dir DIR --balance B --select-metric balanced_accuracy
                 --epochs E --seed S --out WORK/runs/B-sS --quiet EXTRA

for B in none, loss, sampler, then ``resnet eval WORK/runs/B-sS/last.pt --json`` for the per-class
recall of the final weights. The headline figures are the final epoch's (chosen by nothing);
best.pt's (chosen by balanced accuracy on the same held-out part, so optimistic) are beside them.
The runs share one decoded cache (``WORK/cache``): the first run's wall time includes decoding
the set. Results: ``benchmarks/results/cifar10-lt-DATE.{json,md}`` (``--quick``: under ``--work``).
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BALANCES = ("none", "loss", "sampler")
IMBALANCE = 100
FULL = {"held_out": 500, "n_max": 4500, "epochs": 30}
QUICK = {"held_out": 10, "n_max": 100, "epochs": 1}
# CIFAR's own size throughout (no FixRes upscaling), its usual augmentation (crops and flips,
# no rotation or colour jitter), SGD at CIFAR's lr for batch 128.
EXTRA = ("--image-size 32 --eval-image-size 32 --cache-size 32 --batch-size 128 --lr 0.1 --min-scale 0.35 "
         "--rotation 0 --color-jitter 0")
TAIL_LINES = 15


# --- the long-tailed set ---------------------------------------------------------------------


def long_tail_counts(n_max: int, ratio: int = IMBALANCE, classes: int = len(CLASSES)) -> list[int]:
    """n_i = int(n_max * (1/ratio)^(i/(C-1))), as Cao et al.'s code rounds; at least one image."""
    return [max(1, int(n_max * (1 / ratio) ** (i / (classes - 1)))) for i in range(classes)]


def describe_set(source: Path, held_out: int, n_max: int, seed: int) -> dict[str, Any]:
    return {"source": str(source), "classes": list(CLASSES), "imbalance_ratio": IMBALANCE,
            "held_out_per_class": held_out, "n_max": n_max, "train_per_class": long_tail_counts(n_max),
            "data_seed": seed, "version": 1}


def build_set(root: Path, spec: dict[str, Any]) -> None:
    """``root/train/<class>`` and ``root/val/<class>``: symlinks into the source, held-out part
    first. Remade only when ``root/set.json`` describes another set."""
    manifest = root / "set.json"
    if manifest.exists() and json.loads(manifest.read_text()) == spec:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(spec["data_seed"])
    for name, n_train in zip(CLASSES, spec["train_per_class"]):
        files = sorted((Path(spec["source"]) / name).iterdir())
        if len(files) < spec["held_out_per_class"] + n_train:
            sys.exit(f"{Path(spec['source']) / name} has {len(files)} images; the set needs "
                     f"{spec['held_out_per_class'] + n_train}")
        order = rng.permutation(len(files))
        held, kept = order[:spec["held_out_per_class"]], order[spec["held_out_per_class"]:][:n_train]
        for split, chosen in (("val", held), ("train", kept)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in sorted(chosen):
                (folder / files[i].name).symlink_to(files[i].resolve())
    manifest.write_text(json.dumps(spec, indent=2) + "\n")


# --- the runs -----------------------------------------------------------------------------------


def run_logged(command: list[str], log: Path, env: dict[str, str]) -> tuple[int, float]:
    """Exit status and wall seconds of ``command``, its output in ``log``."""
    start = time.perf_counter()
    with open(log, "w") as out:
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    return status, time.perf_counter() - start


def tail(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-TAIL_LINES:]


def train_and_score(balance: str, seed: int, data: Path, work: Path, epochs: int, extra: list[str]) -> dict[str, Any]:
    """One ``resnet train`` and the ``resnet eval`` of its last.pt; the figures of both."""
    out = work / "runs" / f"{balance}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "RESNET_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "resnet", "train", "--dataset", "imagefolder", "--data-dir", str(data),
               "--balance", balance, "--select-metric", "balanced_accuracy", "--epochs", str(epochs),
               "--seed", str(seed), "--out", str(out), "--quiet", *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    status, wall = run_logged(command, work / "runs" / f"{balance}-s{seed}.log", env)
    result: dict[str, Any] = {"balance": balance, "seed": seed, "command": shlex.join(command), "exit_status": status,
                              "wall_seconds": round(wall, 1)}
    if status != 0:
        return {**result, "log_tail": tail(work / "runs" / f"{balance}-s{seed}.log")}
    summary = json.loads((out / "summary.json").read_text())
    result.update(train_seconds=round(summary["seconds"], 1), epochs=summary["epochs"],
                  final={key: summary[f"final_{key}"] for key in ("top1", "balanced_accuracy", "macro_f1")},
                  best={"epoch": summary["best_epoch"],
                        **{key: summary[f"best_{key}"] for key in ("top1", "balanced_accuracy", "macro_f1")}})
    evaluation = [sys.executable, "-m", "resnet", "eval", str(out / "last.pt"), "--json", "--mistakes", "0",
                  "--out", str(out / "eval-last")]
    scored = subprocess.run(evaluation, capture_output=True, text=True, env=env)
    if scored.returncode == 0:
        figures = json.loads(scored.stdout)
        result["eval_last"] = {"command": shlex.join(evaluation), "balanced_accuracy": figures["balanced_accuracy"],
                               "recall": {row["class"]: row["recall"] for row in figures["per_class"]}}
    else:
        result["eval_last"] = {"command": shlex.join(evaluation), "error": scored.stderr.strip()[-2000:]}
    return result


# --- the report ------------------------------------------------------------------------------------


def version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    try:  # a copy of the tree without git (a GPU machine's) has no commit to name
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    except OSError:
        commit = ""
    from resnet.tools.bench import cpu_model

    return {"cpu": cpu_model(), "cpus_usable": len(os.sched_getaffinity(0)), "torch": version("torch"),
            "torchvision": version("torchvision"), "resnet_lab": version("resnet-lab"),
            "python": sys.version.split()[0], "load_average": list(os.getloadavg()), "git_commit": commit.strip()}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    spec, info = report["set"], report["machine"]
    lines = [f"# CIFAR-10-LT (ratio {IMBALANCE}): --balance none, loss, sampler ({report['date']})", "",
             f"Training images per class, airplane to truck: {', '.join(map(str, spec['train_per_class']))} "
             f"({sum(spec['train_per_class']):,}); evaluation: {spec['held_out_per_class']} per class held out of "
             "CIFAR-10's training images first (not its test set). Final epoch's figures; best.pt's was chosen by "
             "balanced accuracy on the same evaluation images.", "",
             "| balance | seed | balanced accuracy | top-1 | macro-F1 | best.pt: epoch, balanced accuracy "
             "| tail class recall | wall time |", "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        if run["exit_status"] != 0:
            lines.append(f"| {run['balance']} | {run['seed']} | failed (exit {run['exit_status']}) | | | | | |")
            continue
        final, best = run["final"], run["best"]
        tail_recall = run.get("eval_last", {}).get("recall", {}).get(CLASSES[-1])
        lines.append(f"| {run['balance']} | {run['seed']} | {percent(final['balanced_accuracy'])} | "
                     f"{percent(final['top1'])} | {percent(final['macro_f1'])} | {best['epoch']}, "
                     f"{percent(best['balanced_accuracy'])} | {percent(tail_recall)} | "
                     f"{run['wall_seconds'] / 60:.1f} min |")
    lines += ["", f"CPU: {info['cpu']} ({info['cpus_usable']} usable), torch {info['torch']}, "
                  f"resnet-lab {info['resnet_lab']} at {info['git_commit'][:12]}.", "", "Commands:", ""]
    lines += [f"    {run['command']}" for run in report["runs"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small set (100 head images, 10 held out a class), 1 epoch")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {FULL['epochs']})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--seed of the runs (default 0)")
    p.add_argument("--balances", nargs="+", choices=BALANCES, default=list(BALANCES))
    p.add_argument("--extra-args", default=EXTRA, help=f"more resnet train options (default: {EXTRA!r})")
    p.add_argument("--source", type=Path, required=True,
                   help="CIFAR-10's training images as <class>/ folders, e.g. DATA/cifar-10/train")
    p.add_argument("--data-seed", type=int, default=0, help="seeds which images are held out and kept")
    p.add_argument("--work", type=Path, default=Path("runs/cifar10-lt"),
                   help="the set, the runs and the decoded cache (default runs/cifar10-lt)")
    args = p.parse_args(argv)
    if not args.source.is_dir():
        p.error(f"--source {args.source}: not a folder (CIFAR-10's training images as <class>/ folders)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    epochs = args.epochs or sizes["epochs"]
    work = args.work.resolve() / ("quick" if args.quick else "full")
    spec = describe_set(args.source.resolve(), sizes["held_out"], sizes["n_max"], args.data_seed)
    build_set(work / "data", spec)
    print(f"set: {work / 'data'}, training images per class {spec['train_per_class']}", flush=True)
    runs = []
    for seed in args.seeds:
        for balance in args.balances:
            runs.append(train_and_score(balance, seed, work / "data", work, epochs, shlex.split(args.extra_args)))
            run = runs[-1]
            print(f"{balance} seed {seed}: exit {run['exit_status']}, {run['wall_seconds']:.0f} s"
                  + (f", balanced accuracy {percent(run['final']['balanced_accuracy'])}" if "final" in run else ""),
                  flush=True)
    date = datetime.now().strftime("%Y-%m-%d")
    report = {"date": date, "set": spec, "epochs": epochs, "extra_args": args.extra_args, "machine": machine(),
              "runs": runs}
    folder = work if args.quick else RESULTS
    stem = f"cifar10-lt-quick-{date}" if args.quick else f"cifar10-lt-{date}"
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {folder / stem}.json and .md")
    return 0 if all(run["exit_status"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
