from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One intra-op thread, here and in the commands the tests start as subprocesses (which inherit
# the environment): the tests' tensors are tiny, and two threads on a two-core machine shared
# with other work spend most of each step waiting for each other (about 3x slower here). A
# value given in the environment is kept.
torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Decoded-image caches and downloads go to a per-test folder, never ~/.cache."""
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "no-data"))


def make_image_folder(root: Path, classes: list[str], per_class: int, size: tuple[int, int] = (40, 48),
                      seed: int = 0) -> Path:
    """root/<class>/<i>.png, each class a strong colour cue over noise (learnable in a step or two)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            pixels[..., label % 3] = 230
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    """18 generated images in 3 class folders (a, b, c): 15 train, 3 validate by the seeded split."""
    return make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=6)


def read_metrics(run_dir: Path) -> list[dict]:
    """A run's metrics.csv, one dict of strings per epoch."""
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


TINY_CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A one-epoch resnet10 run (32 px, flip TTA) on 12 generated images in 3 class folders,
    trained once per session for the explain, mistakes and app tests (resnet10: the checkpoint,
    and every load, export and forward pass of it, at half resnet18's size and cost)."""
    from resnet.cli import main

    root = tmp_path_factory.mktemp("tiny-run")
    data = make_image_folder(root / "data", TINY_CLASSES, per_class=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                     "--image-size", "32", "--eval-image-size", "32", "--batch-size", "4",
                     "--out", str(root / "run"), "--quiet", "--workers", "0", "--precision", "fp32",
                     "--arch", "resnet10"])
    assert code == 0
    return {"root": root, "data": data, "dir": root / "run", "ckpt": root / "run" / "best.pt",
            "classes": TINY_CLASSES}


# --- resnet serve in a subprocess ------------------------------------------------------------

SERVE_START_TIMEOUT = 120  # importing gradio and torch on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """``resnet serve`` of the tiny run, started as a user starts it; yields its URL once the page answers.
    One server a test module (starting one takes seconds): its tests only read from it."""
    tmp_path = tmp_path_factory.mktemp("serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp_path / "serve.log", "w")
    # Its own cache and data folders: the per-test ones of isolated_cache are not set up yet.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "RESNET_CACHE": str(tmp_path / "cache"), "RESNET_DATA": str(tmp_path / "no-data")}
    process = subprocess.Popen([sys.executable, "-m", "resnet", "serve", str(tiny_run["dir"]), "--runs-dir",
                                str(tmp_path / "no-runs"), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"resnet serve did not start:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
