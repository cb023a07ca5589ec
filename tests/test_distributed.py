"""DistributedDataParallel on CPU: two gloo processes launched by torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder
from resnet.cli import main

ARGS = ["--epochs", "2", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--precision", "fp32",
        "--quiet", "--arch", "resnet18", "--lr", "0.5", "--freeze-backbone"]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    data = make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=10)
    common = ["--dataset", "imagefolder", "--data-dir", str(data), *ARGS]
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "resnet",
              "train", *common, "--out", str(tmp_path / "two")]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    # One set of outputs, written by rank 0 alone.
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    summary = json.loads((two / "summary.json").read_text())
    assert summary["eval_images"] == 6  # every eval image is counted, not a shard of them
    one_rows, two_rows = rows(tmp_path / "one"), rows(two)
    # With the backbone frozen (BatchNorm in eval mode), nothing depends on how a batch is split,
    # so averaging the two ranks' gradients over a global batch of 8 (4 per rank) must give the
    # one-process run's numbers up to float summation order: agreement to 1e-4.
    assert len(one_rows) == len(two_rows) == 2
    for a, b in zip(one_rows, two_rows):
        for column in ("train_loss", "eval_loss", "top1", "top5", "lr"):
            assert float(b[column]) == pytest.approx(float(a[column]), abs=1e-4), column
    # The accuracy is over all 6 images: a multiple of 1/6.
    assert all(abs(float(r["top1"]) * 6 - round(float(r["top1"]) * 6)) < 1e-6 for r in two_rows)
