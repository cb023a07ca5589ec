from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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


TINY_CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A one-epoch resnet18 run (32 px, flip TTA) on 12 generated images in 3 class folders,
    trained once per session for the explain, mistakes and app tests."""
    from resnet.cli import main

    root = tmp_path_factory.mktemp("tiny-run")
    data = make_image_folder(root / "data", TINY_CLASSES, per_class=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                     "--image-size", "32", "--eval-image-size", "32", "--batch-size", "4",
                     "--out", str(root / "run"), "--quiet", "--workers", "0", "--precision", "fp32"])
    assert code == 0
    return {"root": root, "data": data, "dir": root / "run", "ckpt": root / "run" / "best.pt",
            "classes": TINY_CLASSES}
