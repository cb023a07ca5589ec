"""airbench94 on the CIFAR-10 hold-out that benchmarks/cifar10.py trains ``resnet train`` on.

    python benchmarks/airbench_cifar10.py --data WORK/full/data --airbench DIR --out RESULT.json

airbench (Keller Jordan's CIFAR-10 speed baselines, the package ``airbench`` 0.1.8; README: 94% in
2.6 s on an A100) reads ``cifar10/train.pt`` and ``cifar10/test.pt`` (uint8 NHWC images, labels,
classes) from its working folder and downloads CIFAR-10 when they are missing. Here both are
written from ``DATA/train`` and ``DATA/val``, the 45,000 / 5,000 split of ``cifar10.py`` (JPEG
re-encodings of CIFAR-10's training images), so it trains and is scored on the images ours is,
and never downloads. ``--airbench``: a folder holding the ``airbench`` package (the unpacked
sdist), when it is not installed. airbench needs CUDA: without it the images are still written
(the script is tried end to end) and the result says it was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def split_tensors(folder: Path, workers: int) -> dict[str, Any]:
    """A split's images as airbench stores them: uint8 (N, 32, 32, 3), labels, class names."""
    import torch

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((folder / name).iterdir())]
    with ProcessPoolExecutor(workers) as pool:
        images = list(pool.map(read, [path for path, _ in files], chunksize=256))
    return {"images": torch.from_numpy(np.stack(images)), "labels": torch.tensor([label for _, label in files]),
            "classes": classes}


def write_set(data: Path, work: Path, workers: int) -> dict[str, int]:
    import torch

    (work / "cifar10").mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, name in (("train", "train.pt"), ("val", "test.pt")):
        tensors = split_tensors(data / split, workers)
        torch.save(tensors, work / "cifar10" / name)
        sizes[split] = len(tensors["labels"])
    return sizes


def train_and_score(work: Path) -> dict[str, Any]:
    """airbench94 as its README runs it (a warm-up, then one timed run), scored on the held-out images."""
    import airbench
    import torch

    os.chdir(work)  # airbench's loaders read cifar10/*.pt from the working folder
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        airbench.warmup94()
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    return {"wall_seconds_with_its_evaluations": round(wall, 2),
            "top1_tta2": airbench.evaluate(model, test, tta_level=2),
            "top1_no_tta": airbench.evaluate(model, test, tta_level=0),
            "its_table": printed.getvalue().splitlines()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the set of cifar10.py: DATA/train and DATA/val")
    p.add_argument("--work", type=Path, default=Path("runs/airbench"), help="where cifar10/*.pt are written")
    p.add_argument("--airbench", type=Path, default=None, help="a folder holding the airbench package")
    p.add_argument("--out", type=Path, required=True, help="the result, as JSON")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    args = p.parse_args(argv)
    if args.airbench is not None:
        sys.path.insert(0, str(args.airbench.resolve()))
    import torch

    start = time.perf_counter()
    sizes = write_set(args.data.resolve(), args.work.resolve(), args.workers)
    result: dict[str, Any] = {"images": sizes, "prepare_seconds": round(time.perf_counter() - start, 1),
                              "torch": torch.__version__}
    if torch.cuda.is_available():
        result.update(gpu=torch.cuda.get_device_name(), **train_and_score(args.work.resolve()))
    else:
        result["skipped"] = "airbench needs a CUDA GPU; the images were written, airbench was not run"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    brief = {k: v for k, v in result.items() if k != "its_table"}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
