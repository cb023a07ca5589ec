"""The datasets by name: the train / eval (/ test) sources of petals, Flowers-102, an image
folder or a label file, and a look at an image folder's typical image size."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from resnet.data.labelfile import first_files, label_file_splits
from resnet.errors import ResnetError
from resnet.data.sources import (
    DataSplits,
    IMAGE_EXTENSIONS,
    flowers102_splits,
    imagefolder_splits,
    open_image,
    petals_splits,
    split_folders,
)


DATASETS = ("petals", "flowers102", "imagefolder")


def load_splits(dataset: str, data_dir: str | None = None, split: str = "tutorial", val_fraction: float = 0.2,
                seed: int = 0, labels: str | None = None) -> DataSplits:
    """The train / eval (/ test) sources of a dataset, by name: files listed, none read. With
    ``labels``, a label file (``resnet.data.labelfile``) lists an image folder's files."""
    if labels is not None:
        if dataset != "imagefolder":
            raise ResnetError(f"--labels reads an image folder; it cannot be used with --dataset {dataset}")
        return label_file_splits(Path(labels), Path(data_dir) if data_dir else Path(labels).parent, val_fraction, seed)
    if dataset == "petals":
        return petals_splits()
    if dataset == "flowers102":
        return flowers102_splits(data_dir, split)
    if dataset == "imagefolder":
        if data_dir is None:
            raise ResnetError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/... or DIR/<class>/...)")
        return imagefolder_splits(Path(data_dir), val_fraction, seed)
    raise ResnetError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def sample_image_files(data_dir: str | os.PathLike, labels: str | os.PathLike | None = None,
                       count: int = 32) -> list[Path]:
    """A few training images of an image folder, found without listing it: the first image of
    each of up to ``count`` class folders (of DIR/train when there is one), or the files of a
    label file's first ``count`` rows. Empty when the folder or file is not what a run reads:
    the run itself then says why, in its own words."""
    try:
        if labels is not None:
            return first_files(Path(labels), Path(data_dir), count)
        root = Path(data_dir)
        root = split_folders(root).get("train", root)
        with os.scandir(root) as entries:
            classes = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
        return [path for folder in classes[:count] for path in first_image_in(Path(folder))]
    except (OSError, ResnetError, UnicodeDecodeError):
        return []


def first_image_in(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                return [Path(entry.path)]
    return []


def typical_shorter_side(paths: Sequence[Path]) -> int | None:
    """The median shorter side of the images, read from their headers (no pixel is decoded);
    None when none of them opens."""
    sides = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the decode says it, once
                with open_image(path) as image:
                    sides.append(min(image.size))
        except (OSError, ResnetError, ValueError, Image.DecompressionBombError):
            continue
    return int(np.median(sides)) if sides else None
