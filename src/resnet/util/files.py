"""Files written whole or not at all: a temporary file beside the target, renamed over it,
with a one-line error when the disk is full."""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from resnet.errors import ResnetError


class DiskFull(ResnetError):
    """A write that the disk had no room for; the file it would have replaced is intact."""

    def __init__(self, path: Path, needed: int | None = None) -> None:
        free = free_bytes(path.parent)
        sizes = [f"it needs {byte_size(needed)}" if needed is not None else "",
                 f"{byte_size(free)} free" if free is not None else ""]
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        super().__init__(f"no space left on the device to write {path} ({', '.join(s for s in sizes if s)}){kept}")


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def byte_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], needed: int | None = None) -> None:
    """Call ``write(file)`` on a temporary file in the same folder, flush it to disk, then
    rename it over ``path``: a crash at any moment leaves either the old file or the new
    one, never half, and a concurrent reader never sees a partial file. The temporary
    name is unique (random, created exclusively), so processes on several machines sharing
    a folder cannot collide. The file gets the mode ``open()`` would give it: the old
    file's, else 0o666 less the umask. A full disk is a ``DiskFull`` error (``needed``:
    the bytes it would have taken, when known)."""
    path = Path(path)
    temporary = None
    try:
        descriptor, temporary = create_temporary(path)
        with os.fdopen(descriptor, "wb") as f:
            keep_mode(temporary, path)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise DiskFull(path, needed) from None
        raise
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, open for writing, under a random name no other process
    holds. ``tempfile.mkstemp`` would make it 0o600, and with it every run file private
    whatever the umask; ``open()`` creates 0o666 less the umask, and so does this."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return descriptor, temporary


def keep_mode(temporary: Path, path: Path) -> None:
    """The mode of the file ``temporary`` will replace, as ``open()`` keeps it when it truncates
    a file (a run a user has made private, or shared with a group, stays so)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``write_atomic``. The object is serialized in memory first:
    its size is then known, so a disk without room for it is refused before a byte is
    written (torch's own writer reports a full disk as an opaque RuntimeError)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    needed = buffer.getbuffer().nbytes
    free = free_bytes(path.parent)
    if free is not None and free < needed:
        raise DiskFull(path, needed)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), needed)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    data = text.encode()
    write_atomic(path, lambda f: f.write(data), len(data))
