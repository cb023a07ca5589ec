"""The options of ``resnet eval``, ``resnet calibrate`` and ``resnet predict``, and their check.

The command line and the Python API each build one of these objects from what they were given
(converting types only), and the command's function checks it here, before any file is read:
so a bad value reads the same, one line naming the flag, whichever way it came.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from resnet.config import CHOICES, MAX_IMAGE_SIZE, flag
from resnet.errors import ResnetError


@dataclass(frozen=True)
class DataOptions:
    """The images a checkpoint is scored on (by default the dataset, folder and split it was
    trained on) and how they are read: the options ``resnet calibrate`` takes."""

    dataset: str | None = None
    data_dir: str | None = None
    split: str | None = None
    subset: str = "eval"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"

    def validate(self) -> None:
        """A one-line error naming the flag of the first bad value. The dataset, the subset and
        the device are checked where they are used: calibrate takes other subsets than eval."""
        check_choice("split", self.split)
        check_count("batch_size", self.batch_size, 1)
        check_count("workers", self.workers, 0, allow_none=True)


@dataclass(frozen=True)
class EvalOptions(DataOptions):
    """``resnet eval``'s options: the images, then what is written and how the model is run."""

    out: str | os.PathLike | None = None
    image_size: int | None = None  # None: the run's evaluation size
    tta: bool | None = None  # None: as the run evaluated
    mistakes: int = 16
    min_confidence: float | None = None

    def validate(self) -> None:
        super().validate()
        check_count("mistakes", self.mistakes, 0)
        check_count("image_size", self.image_size, 1, allow_none=True)
        if self.image_size is not None and not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ResnetError(f"--image-size must be between 32 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        check_min_confidence(self.min_confidence)


@dataclass(frozen=True)
class PredictOptions:
    """``resnet predict``'s options: how many classes to show, and how the model is run."""

    top_k: int = 5
    batch_size: int = 32
    device: str = "auto"
    min_confidence: float | None = None  # below it the answer is unknown (None: always a class)

    def validate(self) -> None:
        check_count("top_k", self.top_k, 1)
        check_count("batch_size", self.batch_size, 1)
        check_min_confidence(self.min_confidence)


def check_choice(name: str, value: str | None) -> None:
    """A choice the command's parser would refuse (None: not given), in the config's words."""
    if value is not None and value not in CHOICES[name]:
        raise ResnetError(f"{flag(name)} must be one of {', '.join(CHOICES[name])}, got {value!r}")


def check_count(name: str, value: int | None, least: int, allow_none: bool = False) -> None:
    """A whole number of at least ``least`` (1 or 0); a bool or a float is not one."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        kind = "a positive integer" if least == 1 else "a non-negative integer"
        raise ResnetError(f"{flag(name)} must be {kind}, got {value!r}")


def check_min_confidence(value: float | None) -> None:
    """--min-confidence is a probability (None: not given)."""
    if value is not None and not 0 <= value <= 1:
        raise ResnetError(f"--min-confidence must be a probability in [0, 1], got {value:g}")
