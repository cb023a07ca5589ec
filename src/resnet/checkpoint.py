"""Checkpoints: written atomically, read without running code (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from resnet.errors import ResnetError


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over
    ``path``: a crash at any moment leaves either the old file or the new one, never half."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as plain data. A missing, truncated or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ResnetError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ResnetError(f"{path} is not a readable checkpoint ({first_line[:200]})") from None
    if not isinstance(obj, dict):
        raise ResnetError(f"{path} does not hold a checkpoint or a state_dict")
    return obj
