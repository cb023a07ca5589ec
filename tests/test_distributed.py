"""DistributedDataParallel on CPU: two gloo processes launched by torchrun."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_each_machine_decodes_its_own_cache_once(tmp_path, monkeypatch):
    """Two torchrun launchers stand for two machines of two processes each; each has its own
    RESNET_CACHE, standing for its own disk. The two processes of a machine share its decode,
    each a half of the images, and each machine's cache gets every file, as one process decodes it."""
    from resnet.data.cache import decode
    from resnet.data.sources import ImageFiles

    data = make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=8)
    port = free_port()
    launchers = []
    for node in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNET_CACHE": str(tmp_path / f"cache-{node}")}
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
                  f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "resnet",
                  "train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1", "--image-size", "32",
                  "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--arch", "resnet18",
                  "--out", str(tmp_path / "run")]
        launchers.append(subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [launcher.communicate(timeout=900) for launcher in launchers]
    for launcher, (_, err) in zip(launchers, outputs):
        assert launcher.returncode == 0, err[-3000:]

    for node, (_, err) in enumerate(outputs):
        # 24 images, 6 held out: each process decodes 9 of the 18 training and 3 of the 6 evaluation images.
        decoding = re.findall(r"resnet train \(rank (\d)\): decoding (\d+ of \d+) images at (\d+) px", err)
        assert sorted(decoding) == sorted((str(rank), part, size) for rank in (2 * node, 2 * node + 1)
                                          for part, size in (("9 of 18", "37"), ("3 of 6", "41"))), err[-3000:]
        cache = tmp_path / f"cache-{node}"
        assert len(list(cache.glob("*/index.npz"))) == 2 and not list(cache.glob("*/ok-*.npy"))
        files = sorted((data / name / f"{i}.png") for name in ("a", "b", "c") for i in range(8))
        source, every = ImageFiles(files, [0] * len(files)), torch.arange(len(files))
        monkeypatch.setenv("RESNET_CACHE", str(cache))
        shared = decode(source, 41, workers=0)  # the evaluation store: a quarter of its files are in it
        alone = decode(source, 41, workers=0, use_disk_cache=False)
        assert torch.equal(shared.gather(every), alone.gather(every))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_images"] == 6
