"""Calibration of a trained run, measured on images the temperature was not fitted on.

    python benchmarks/calibration.py RUN --name flowers102 \
        --fit-args "--split official --subset val" --eval-args ""

The run is copied first (``resnet calibrate`` writes into best.pt, last.pt and config.json, and
the original stays as it was). Then, on the copy:

1. ``resnet eval COPY --json EVAL_ARGS``: top-1, ECE (15 bins), reliability.png, before;
2. ``resnet calibrate COPY FIT_ARGS``: the temperature, fitted on the images FIT_ARGS name;
3. ``resnet eval COPY --json EVAL_ARGS`` again: after.

FIT_ARGS and EVAL_ARGS must name disjoint images (the ECE after fitting on the scored images
themselves is optimistic): for Flowers-102's tutorial split, fit on the official ``val`` images
(which a tutorial-split run neither trains nor evaluates on) and score on its evaluation images.
Results: ``benchmarks/results/calibration-NAME/`` (README.md, both JSON reports, both
reliability diagrams, the coverage curve after).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_lt import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("top1", "ece", "temperature", "loss", "images")


def resnet(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "resnet", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{done.stderr.strip()[-2000:]}")
    return done


def scored(copy: Path, eval_args: list[str], out: Path, tag: str) -> dict[str, Any]:
    """``resnet eval --json`` of the copy's best.pt, its reliability diagram kept as reliability-TAG.png."""
    report = json.loads(resnet("eval", str(copy), "--json", "--mistakes", "0", "--out", str(out / tag),
                               *eval_args).stdout)
    for png in ("reliability.png", "coverage.png"):
        if (out / tag / png).exists():
            shutil.copy(out / tag / png, out / f"{png[:-4]}-{tag}.png")
    shutil.rmtree(out / tag)
    return report


def markdown(name: str, commands: list[str], before: dict, after: dict, info: dict) -> str:
    row = lambda label, r: (f"| {label} | {r['temperature']:.3f} | {100 * r['ece']:.2f}% | "  # noqa: E731
                            f"{100 * r['top1']:.2f}% | {r['loss']:.4f} |")
    return "\n".join([
        f"# Calibration: {name} ({datetime.now():%Y-%m-%d})", "",
        "| | temperature | ECE (15 bins) | top-1 | NLL |", "|---|---:|---:|---:|---:|",
        row("before", before), row("after", after), "",
        "![before](reliability-before.png) ![after](reliability-after.png)", "",
        f"CPU: {info['cpu']}, torch {info['torch']}, resnet-lab at {info['git_commit'][:12]}.", "",
        "Commands (on a copy of the run):", "", *[f"    {c}" for c in commands], ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--fit-args", default="", help="resnet calibrate options: the images to fit on")
    p.add_argument("--eval-args", default="", help="resnet eval options: the images to score on")
    p.add_argument("--work", type=Path, default=Path("runs/calibration"),
                   help="where the copy of the run is made (default runs/calibration)")
    args = p.parse_args(argv)
    copy, out = args.work / args.name, RESULTS / f"calibration-{args.name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("*.onnx", "*.lock"))
    out.mkdir(parents=True, exist_ok=True)
    fit, evaluation = shlex.split(args.fit_args), shlex.split(args.eval_args)
    before = scored(copy, evaluation, out, "before")
    fitted = resnet("calibrate", str(copy), *fit)
    after = scored(copy, evaluation, out, "after")
    commands = [f"resnet eval COPY --json --mistakes 0 {args.eval_args}".strip(),
                f"resnet calibrate COPY {args.fit_args}".strip(), "(and resnet eval again)"]
    info = machine()
    report = {"name": args.name, "run": str(args.run), "commands": commands, "calibrate_output": fitted.stdout,
              "before": {k: before.get(k) for k in KEYS}, "after": {k: after.get(k) for k in KEYS},
              "machine": info}
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(markdown(args.name, commands, before, after, info))
    print(fitted.stdout, (out / "README.md").read_text(), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
