"""Datasets, splits, class names, and how one image is read.

Every source becomes an ``ImageFiles`` (paths and labels) or, for the built-in
petals, arrays already in memory. Listing a dataset reads no image: the decode
(``resnet.data.cache``) reads each once, and finds the unreadable ones as it goes.
"""

from __future__ import annotations

import copy
import os
import re
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from resnet.data import petals
from resnet.errors import ResnetError
from resnet.util.hardware import available_cpus
from resnet.util.signals import leave_signals_to_the_main_process
from resnet.words import plural

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
PETALS_SIZES = {"train": 3000, "eval": 1000}  # images per split of the built-in set


def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open any image as upright 8-bit RGB: EXIF orientation applied; bilevel, grayscale,
    palette, CMYK, YCbCr and LAB converted; alpha composited on white (transparent pixels
    become white, not black); grayscale deeper than 8 bits scaled down (``to_8bit``).

    ``draft_size``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    several times faster), staying at least this size on both sides; other formats ignore it.
    """
    with open_image(path) as image:
        if draft_size is not None:
            image.draft("RGB", (draft_size, draft_size))
        image = ImageOps.exif_transpose(image)
        if image.mode in DEEP_GRAY_MODES:
            image = to_8bit(image)
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open``, once ``path`` is known to be a regular file (``check_regular_file``).
    An image over PIL's decompression-bomb limit is a warning that names the file: PIL's own
    says only the pixel count. Over twice the limit PIL refuses it (DecompressionBombError)."""
    check_regular_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, with the file's name
        image = Image.open(path)
    width, height = image.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:  # PIL's test
        warnings.warn(f"{printable(os.fsdecode(path))}: {width}x{height} is {width * height:,} pixels, over PIL's "
                      f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,}; reading it anyway",
                      Image.DecompressionBombWarning, stacklevel=2)
    return image


# What a path can be besides a regular file, by the test of its stat mode.
NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: str | os.PathLike) -> None:
    """A ResnetError naming what ``path`` is when it is not a regular file: opening a FIFO
    waits for a writer forever, and a device or socket never holds an image. Links are
    followed (a link to a FIFO is a FIFO); a missing file raises ``FileNotFoundError``."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in NOT_REGULAR if test(mode)), "a special file")
        raise ResnetError(f"{os.fspath(path)}: {kind}, not a regular file")


def printable(name: str) -> str:
    """``name`` with each byte that was not UTF-8 (``os.fsdecode`` keeps such bytes as lone
    surrogates) shown as U+FFFD: text that any file, font or terminal accepts, for labels
    and tables meant to be read. Paths and class names themselves stay as they are."""
    return re.sub(r"[\ud800-\udfff]", "\N{REPLACEMENT CHARACTER}", name)


# Pillow's own conversion of these to RGB clips at 255: a 16-bit photo becomes white.
DEEP_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(image: Image.Image) -> Image.Image:
    """Grayscale of 16 bits, 32-bit integers or floats as 8-bit ``L``, full scale onto 255.

    Full scale is 65535 for 16-bit modes; for ``I`` and ``F``, whose depth the mode does not
    say, it is 1.0 for floats within [0, 1], 255 for values within [0, 255], else 65535.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    largest = values.max(initial=0.0)
    if image.mode.startswith("I;16") or largest > 255:
        full_scale = 65535.0
    elif image.mode == "F" and largest <= 1:
        full_scale = 1.0
    else:
        full_scale = 255.0
    return Image.fromarray(np.clip(np.rint(values * (255 / full_scale)), 0, 255).astype(np.uint8))


class ImageFiles(Dataset):
    """Labelled image files; items are ``(transform(PIL RGB image), label)``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable | None = None,
                 draft_size: int | None = None) -> None:
        self.paths = [p if isinstance(p, Path) else Path(p) for p in paths]
        self.labels = list(labels)
        self.transform = transform
        self.draft_size = draft_size  # see open_rgb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = open_rgb(self.paths[index], self.draft_size)
        return (self.transform(image) if self.transform else image), self.labels[index]

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.transform)


class ImageArrays(Dataset):
    """Labelled images already in memory as uint8 (N, 3, H, W); items as for ``ImageFiles``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].transpose(1, 2, 0))
        return (self.transform(image) if self.transform else image), int(self.labels[index])


Source = ImageFiles | ImageArrays


@dataclass
class DataSplits:
    """What a run trains and evaluates on. ``test`` is reported once at the end, if present."""

    train: Source
    eval: Source
    classes: list[str]
    test: Source | None = None
    eval_name: str = "eval"
    eval_is_test: bool = False  # evaluated on the test split: no validation images to select or fit on
    skipped: list[str] = field(default_factory=list)  # unreadable files left out


# --- sources ------------------------------------------------------------------


def petals_splits() -> DataSplits:
    train = ImageArrays(*petals.make_petals(PETALS_SIZES["train"], seed=0))
    evaluation = ImageArrays(*petals.make_petals(PETALS_SIZES["eval"], seed=1))
    return DataSplits(train, evaluation, list(petals.CLASSES))


def default_data_root() -> Path:
    return Path(os.environ.get("RESNET_DATA", Path.home() / ".cache" / "resnet" / "data"))


def flowers102_splits(data_dir: str | None, split: str) -> DataSplits:
    from torchvision.datasets import Flowers102

    root = Path(data_dir) if data_dir else default_data_root()
    # The tutorial's split trains on the large "test" split and evaluates on "train".
    names = {"tutorial": ("test", "train", None), "official": ("train", "val", "test")}
    if split not in names:
        raise ResnetError(f"unknown split {split!r} for flowers102; choose one of: {', '.join(names)}")

    def load(name: str | None) -> ImageFiles | None:
        if name is None:
            return None
        try:
            ds = Flowers102(root=str(root), split=name, download=False)
        except RuntimeError:
            try:
                ds = Flowers102(root=str(root), split=name, download=True)
            except Exception as error:  # offline: urllib / socket errors of many kinds
                raise ResnetError(
                    f"Flowers-102 is not in {root / 'flowers-102'} and could not be downloaded "
                    f"({type(error).__name__}); download it once (online) or pass --data-dir pointing at a folder "
                    "that holds flowers-102/") from None
        # torchvision keeps the file list privately; reading it lets the cache key on the files.
        return ImageFiles(ds._image_files, ds._labels)

    train_name, eval_name, test_name = names[split]
    classes = list(Flowers102.classes) if hasattr(Flowers102, "classes") else [str(i) for i in range(102)]
    return DataSplits(load(train_name), load(eval_name), classes, load(test_name), eval_name=eval_name)


def image_files_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` by extension, sorted. Hidden files and folders
    (``.ipynb_checkpoints``, macOS's ``._photo.png``) are not images of the set, and a link to a
    folder is not followed (no loops). Anything else with an image's name is kept, a broken
    link, a FIFO or a device as much as a regular file, so that reading it fails and is reported
    like any unreadable file. One ``scandir`` per folder and no ``stat`` per file: listing a
    million files is part of every start."""
    found, pending = [], [os.fspath(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if not entry.is_symlink() and entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                        found.append(entry.path)
        except PermissionError:  # a folder that cannot be listed holds no image of the set
            continue
    return [Path(path) for path in sorted(found, key=lambda path: path.split(os.sep))]


def list_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and (path, label) for every image file below them."""
    if not root.is_dir():
        raise ResnetError(f"{root} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ResnetError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        files = image_files_under(root / name)
        if not files:
            raise ResnetError(f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(p, label) for p in files]
    return classes, samples


Samples = list[tuple[Path, int]]  # (image file, label)


# The names of an evaluation folder beside DIR/train, matched case-insensitively. With a
# validation folder and a test folder, the run validates on the first and scores the test
# folder once, at the end (as Flowers-102's official split does).
VALIDATION_FOLDERS = ("val", "valid", "validation")
TEST_FOLDERS = ("test",)


def imagefolder_splits(root: Path, val_fraction: float, seed: int) -> DataSplits:
    """DIR/train beside DIR/val (or valid, validation, test), or DIR/<class>/... split per class
    (seeded). No image is read here: the decode finds the unreadable ones."""
    if not root.is_dir():
        raise ResnetError(f"{root} is not a directory")
    folders = split_folders(root)
    if "train" not in folders:
        classes, train_samples, val_samples = split_class_folders(root, val_fraction, seed)
        return DataSplits(files(train_samples), files(val_samples), classes, eval_name="val")
    classes, train_samples = list_class_folders(folders["train"])
    evaluated = folders.get("val") or folders.get("test")
    if evaluated is None:
        raise ResnetError(f"{folders['train']} exists but no evaluation folder is beside it (name it one of "
                          f"{', '.join(VALIDATION_FOLDERS + TEST_FOLDERS)})")
    test = folders.get("test") if folders.get("val") else None
    return DataSplits(files(train_samples), files(samples_like(evaluated, classes)), classes,
                      files(samples_like(test, classes)) if test else None, eval_name=evaluated.name,
                      eval_is_test=evaluated is folders.get("test"))


def files(samples: Samples) -> ImageFiles:
    return ImageFiles([p for p, _ in samples], [label for _, label in samples])


def split_folders(root: Path) -> dict[str, Path]:
    """DIR's train, validation and test folders by role ("train", "val", "test"), their names
    matched case-insensitively; two folders for one role are an error naming both."""
    roles = {"train": "train", **{name: "val" for name in VALIDATION_FOLDERS},
             **{name: "test" for name in TEST_FOLDERS}}
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        role = roles.get(entry.name.lower())
        if role is None or not entry.is_dir():
            continue
        if role in found:
            raise ResnetError(f"{root} has both {found[role].name}/ and {entry.name}/: keep one {role} folder")
        found[role] = entry
    return found


def samples_like(folder: Path, classes: list[str]) -> Samples:
    """The samples of an evaluation folder, labelled as the training folder's classes are. It
    may lack a class (a small validation set often does) but not have one training lacks."""
    folder_classes, samples = list_class_folders(folder)
    unknown = sorted(set(folder_classes) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ResnetError(f"{folder} has {plural(len(unknown), 'class folder')} that the training folder does not: "
                          f"{shown}")
    label_of = {name: classes.index(name) for name in folder_classes}
    return [(path, label_of[folder_classes[label]]) for path, label in samples]


def split_class_folders(root: Path, val_fraction: float, seed: int) -> tuple[list[str], Samples, Samples]:
    """Classes, training and held-out samples of DIR/<class>/..., split per class in a seeded order."""
    classes, samples = list_class_folders(root)
    if not 0 < val_fraction < 1:
        raise ResnetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    train_samples, val_samples = stratified_split(samples, val_fraction, seed)
    check_held_out(classes, samples, val_samples, val_fraction)
    warn_of_classes_without(classes, [label for _, label in val_samples],
                            "too few images to hold one out, so no validation image")
    return classes, train_samples, val_samples


def report_unreadable(bad: Sequence[str], strict: bool) -> None:
    """One warning naming the unreadable files, which are left out (with ``strict``, an error)."""
    if not bad:
        return
    listing = ", ".join(sorted(bad))
    if strict:
        raise ResnetError(f"{plural(len(bad), 'unreadable image')}: {listing}")
    warnings.warn(f"skipping {plural(len(bad), 'unreadable image')}: {listing}", stacklevel=3)


def check_held_out(classes: list[str], samples: Samples, held_out: Samples, fraction: float,
                   elsewhere: str = "use DIR/train + DIR/val") -> None:
    """An error when nothing at all is held out for validation; ``elsewhere`` says how the
    source can name its validation images instead (an image folder's, a label file's way)."""
    if held_out:
        return
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    if counts.max() == 1:
        raise ResnetError(f"every class has a single image: nothing to hold out for validation; add images or "
                          f"{elsewhere}")
    raise ResnetError(f"--val-fraction {fraction:g} holds out no image of any class (the largest has "
                      f"{counts.max()}); raise it, add images, or {elsewhere}")


def warn_of_classes_without(classes: list[str], labels: Sequence[int], problem: str) -> None:
    """A warning naming the classes no label of ``labels`` has (``problem`` says what they lack)."""
    present = set(int(label) for label in labels)
    missing = [name for label, name in enumerate(classes) if label not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        warnings.warn(f"{plural(len(missing), 'class')} {'has' if len(missing) == 1 else 'have'} {problem}: {shown}",
                      stacklevel=3)


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split each class in a seeded random order; every class keeps at least one training image."""
    generator = torch.Generator().manual_seed(seed)
    train, held_out = [], []
    for label in sorted({label for _, label in samples}):
        members = [s for s in samples if s[1] == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_held = min(len(members) - 1, round(len(members) * fraction))
        held_out += [members[i] for i in order[:n_held]]
        train += [members[i] for i in order[n_held:]]
    return train, held_out


# --- the images' size, from a sample -------------------------------------------------------


# --- decoding one image, and where decoded images are kept -------------------------


class _ResizeToTensor:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # Squash to a square, as the tutorial's evaluation Resize((s, s)) does; the
        # random-resized-crop's aspect-ratio range covers the distortion in training.
        image = image.resize((self.size, self.size), Image.BILINEAR, reducing_gap=None)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def classic_loader(source: Source, batches: list[torch.Tensor], transform: Callable, workers: int | None,
                   seed: int) -> DataLoader:
    """The tutorial's pipeline: per-image PIL transforms in DataLoader workers (None: one per
    CPU this process may use, asked where it runs), over the given batches of indices."""
    workers = available_cpus() if workers is None else workers
    dataset = copy.copy(source)
    dataset.transform = transform
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=leave_signals_to_the_main_process)
