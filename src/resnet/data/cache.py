"""The decoded-image cache: each image decoded once, streamed to disk, found again by its file.

A *store* holds the images of one folder at one size, in ``RESNET_CACHE/<key>/``:

- ``images.u8``: rows of uint8 ``(3, S, S)``, appended as they are decoded (never held whole
  in memory) and read back memory-mapped;
- ``index.npz``: for every file decoded, its path, size and modification time, its row, and
  whether it decoded at all (an unreadable file is found here, by the one decode).

A split's files are looked up in the index by path, size and modification time, so a warm
start lists and stats the files and reads no image; a new or changed file is decoded and
appended (a changed file's old row is left unreferenced). During a decode the index is
rewritten every few seconds, atomically, so a decode that is killed continues where it
stopped: the rows after the last index write are decoded again and overwritten. A process
that writes holds the store's lock; readers need none, since a row the index names is never
rewritten. Size 0 keeps no pixels, only whether each file decodes: the check the classic
pipeline needs.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnet.util.files import byte_size, free_bytes, write_atomic
from resnet.data.sources import (
    ImageArrays,
    ImageFiles,
    Source,
    _ResizeToTensor,
    open_image,
    open_rgb,
    report_unreadable,
)
from resnet.errors import ResnetError
from resnet.util.hardware import available_cpus
from resnet.util.progress import progress_bar
from resnet.util.signals import leave_signals_to_the_main_process
from resnet.words import plural

try:
    import fcntl
except ImportError:  # Windows: no flock; two processes must not decode into one store at once there
    fcntl = None

STORE_FORMAT = 3  # part of every store's key: a new layout never reads an old one
INDEX_EVERY_SECONDS = 5.0  # how much decoding a killed decode can lose
DECODE_BATCH = 64


def cache_dir() -> Path:
    return Path(os.environ.get("RESNET_CACHE", Path.home() / ".cache" / "resnet" / "decoded"))


def check_cache_dir(folder: Path) -> None:
    """Make the cache folder and create (then delete) a file in it, or a one-line ResnetError
    that says why not and what to do: called before a decode, so that a folder that cannot
    hold the cache fails at once instead of after minutes of decoding."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResnetError(cache_dir_problem(folder, "cannot create the folder", error)) from None
    try:
        with tempfile.NamedTemporaryFile(prefix=".probe-", dir=folder):
            pass
    except OSError as error:
        raise ResnetError(cache_dir_problem(folder, "cannot create a file in it", error)) from None


def cache_dir_problem(folder: Path, failed: str, error: OSError) -> str:
    """The error's text: which cache folder (RESNET_CACHE's or the default), what is wrong, what to do."""
    where = (f"RESNET_CACHE={os.environ['RESNET_CACHE']}" if "RESNET_CACHE" in os.environ
             else f"the decoded-image cache {folder} (RESNET_CACHE is not set)")
    # Being a file, or under one, is the usual mistake; say which file it is.
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    problem = f"{blocking} is a file, not a folder" if blocking else f"{failed} ({error.strerror or error})"
    return f"{where}: {problem}; set RESNET_CACHE to a folder that can be written"


@dataclass
class DecodedImages:
    """A split decoded once: ``images`` (R, 3, S, S) uint8, the store's rows or the images
    themselves; ``rows`` (N,) the row of each of the split's images (None: row i is image i);
    ``labels`` (N,) int64; ``ok`` (N,) whether each image decoded (an unreadable one's row is
    zeros)."""

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None = None
    ok: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at the split's ``indices``: only those rows are read."""
        return self.images[indices if self.rows is None else self.rows[indices]]

    def readable(self) -> torch.Tensor:
        return torch.ones(len(self), dtype=torch.bool) if self.ok is None else self.ok

    def subset(self, keep: torch.Tensor) -> DecodedImages:
        rows = torch.arange(len(self)) if self.rows is None else self.rows
        return DecodedImages(self.images, self.labels[keep], rows[keep], self.readable()[keep])


@dataclass(frozen=True)
class Share:
    """One of the ``ranks`` processes of a machine that decode together (torchrun's local ranks)."""

    rank: int
    ranks: int
    barrier: Callable[[], None]  # waits for every process of the job


def decode(source: Source, size: int, workers: int | None = None, use_disk_cache: bool = True,
           draft: bool = False, check_stop: Callable[[], None] | None = None,
           progress: str | None = None, share: Share | None = None) -> DecodedImages:
    """A split decoded into uint8 (3, size, size) images, from the store where it is there.

    ``draft``: decode JPEGs at a reduced scale first (``open_rgb``). For training caches
    only: their random crops are resampled anyway, while evaluation and ``resnet predict``
    share the full decode, so a model is scored on exactly what predict gives it. ``size``
    0 keeps no pixels (``ok`` alone). ``workers``: decoding processes (default: one per CPU
    this process may use). ``check_stop`` is called after every batch decoded. ``progress``:
    the prefix (``resnet train``) of a line announcing a decode and of its progress bar;
    None decodes silently. ``share``: this process decodes its share of what is missing,
    the other processes of its machine the rest."""
    labels = torch.as_tensor(np.asarray(source.labels), dtype=torch.int64)
    if isinstance(source, ImageArrays):
        return DecodedImages(resized_arrays(source.images, size), labels)
    workers = available_cpus() if workers is None else workers
    if not use_disk_cache:
        images, ok = np.empty((len(source), *row_shape(size)), np.uint8), np.ones(len(source), bool)
        for start, batch, batch_ok in decoded_batches(source.paths, size, draft, workers, check_stop, progress):
            images[start:start + len(batch)], ok[start:start + len(batch)] = batch, batch_ok
        return DecodedImages(torch.from_numpy(images), labels, ok=torch.from_numpy(ok))
    store = Store.for_files(source.paths, size, draft)
    if share is not None and share.ranks > 1:
        rows, ok, used = store.rows_shared(source.paths, share, max(1, workers // share.ranks), check_stop, progress)
    else:
        rows, ok, used = store.rows_of(source.paths, workers, check_stop, progress)
    return DecodedImages(store.images(used), labels, torch.from_numpy(rows), torch.from_numpy(ok))


def resized_arrays(images: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(images)
    if not size:
        return tensor[:, :0].flatten(1)
    if tensor.shape[-1] != size or tensor.shape[-2] != size:
        tensor = torch.nn.functional.interpolate(tensor.float(), size=(size, size), mode="bilinear",
                                                 antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return tensor


def row_shape(size: int) -> tuple[int, ...]:
    return (3, size, size) if size else (0,)


# --- decoding in parallel ----------------------------------------------------------------------


class DecodeFiles(Dataset):
    """``(uint8 image, decoded)`` per file; an unreadable file gives zeros and False, never an error."""

    def __init__(self, paths: Sequence[Path], size: int, draft: bool) -> None:
        self.paths, self.size, self.draft = paths, size, draft
        self.resize = _ResizeToTensor(size) if size else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            if self.resize is None:
                with open_image(self.paths[index]) as image:
                    image.load()
                return torch.empty(0, dtype=torch.uint8), True
            return self.resize(open_rgb(self.paths[index], self.size if self.draft else None)), True
        except Exception:  # corrupt, truncated, not an image, not a regular file: the index says so
            return torch.zeros(row_shape(self.size), dtype=torch.uint8), False


def decoded_batches(paths: Sequence[Path], size: int, draft: bool, workers: int,
                    check_stop: Callable[[], None] | None, progress: str | None):
    """``(first index, uint8 images, decoded flags)`` in order, decoded by ``workers`` processes
    (none: in this one) while this process writes what they return."""
    loader = DataLoader(DecodeFiles(paths, size, draft), batch_size=DECODE_BATCH,
                        num_workers=workers if workers > 1 else 0, shuffle=False,
                        worker_init_fn=leave_signals_to_the_main_process)
    bar = progress_bar(len(paths), f"{progress}: decoding" if size else f"{progress}: checking",
                       wanted=progress is not None, unit="img", mininterval=0.5)
    start = 0
    try:
        for images, ok in loader:
            yield start, images.numpy(), ok.numpy()
            start += len(images)
            bar.update(len(images))
            if check_stop is not None:
                check_stop()
    finally:
        bar.close()


# --- the store ------------------------------------------------------------------------------


@dataclass
class Index:
    """What a store holds: per file, its identity (size, mtime), row and whether it decoded.
    An entry whose size is -1 is reserved for a file not decoded yet."""

    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    rows: np.ndarray
    ok: np.ndarray
    used: int = 0  # rows in use in images.u8; the next decoded image goes here

    @classmethod
    def empty(cls) -> Index:
        return cls([], *(np.zeros(0, np.int64) for _ in range(3)), np.zeros(0, bool))

    def positions(self) -> dict[str, int]:
        return {path: i for i, path in enumerate(self.paths)}

    def reserve(self, keys: list[str]) -> np.ndarray:
        """The entries of ``keys`` (absolute paths), new ones added as not decoded yet."""
        where = self.positions()
        new = [key for key in dict.fromkeys(keys) if key not in where]
        where.update((key, len(self.paths) + i) for i, key in enumerate(new))
        self.paths += new
        self.sizes, self.mtimes, self.rows = (np.concatenate([a, np.full(len(new), -1, np.int64)])
                                              for a in (self.sizes, self.mtimes, self.rows))
        self.ok = np.concatenate([self.ok, np.zeros(len(new), bool)])
        entries = np.array([where[key] for key in keys], np.int64)
        self.sizes[entries] = -1  # a changed file is not what its old row holds
        return entries

    def enter(self, entries: np.ndarray, identities: np.ndarray, rows: np.ndarray, ok: np.ndarray) -> None:
        """Record decoded files: their (size, mtime) pairs, rows and flags; the rows in use grow to cover them."""
        self.sizes[entries], self.mtimes[entries] = identities.T
        self.rows[entries], self.ok[entries] = rows, ok
        if len(rows):
            self.used = max(self.used, int(rows.max()) + 1)

    def save(self, path: Path) -> None:
        names = np.frombuffer(b"\0".join(os.fsencode(p) for p in self.paths), np.uint8)
        write_atomic(path, lambda f: np.savez(f, names=names, sizes=self.sizes, mtimes=self.mtimes, rows=self.rows,
                                              ok=self.ok, used=np.int64(self.used)))

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            with np.load(path) as saved:
                names = saved["names"].tobytes()
                paths = [os.fsdecode(name) for name in names.split(b"\0")] if names else []
                return cls(paths, saved["sizes"], saved["mtimes"], saved["rows"], saved["ok"].astype(bool),
                           int(saved["used"]))
        except (OSError, ValueError, KeyError):  # none yet, or damaged: decode again rather than trust it
            return cls.empty()


class Store:
    """One folder's images at one size and decode mode (see the module's docstring)."""

    def __init__(self, folder: Path, size: int, draft: bool) -> None:
        self.folder, self.size, self.draft = folder, size, draft
        self.row_bytes = int(np.prod(row_shape(size)))

    @classmethod
    def for_files(cls, paths: Sequence[Path], size: int, draft: bool) -> Store:
        """The store of the folder that holds ``paths``, at ``size``."""
        parents = {os.path.abspath(folder) for folder in {os.path.dirname(os.fspath(p)) for p in paths}}
        root = os.path.commonpath(sorted(parents)) if parents else ""
        key = hashlib.sha256(os.fsencode(f"v{STORE_FORMAT} {size} draft={draft} ") + os.fsencode(root))
        return cls(cache_dir() / key.hexdigest()[:24], size, draft)

    @property
    def index_path(self) -> Path:
        return self.folder / "index.npz"

    def prepare(self) -> None:
        """The store's folder, made after the cache folder is checked: before any image is read,
        one line says what is wrong with it."""
        check_cache_dir(cache_dir())
        self.folder.mkdir(exist_ok=True)

    def truncate(self, used: int) -> None:
        """images.u8 cut to the rows in use: what a killed decode wrote after its last index goes."""
        with open(self.folder / "images.u8", "ab+") as file:
            file.truncate(used * self.row_bytes)

    def images(self, used: int) -> torch.Tensor:
        """The first ``used`` rows, memory-mapped (copy-on-write: a stray write never reaches the file)."""
        if not self.size or not used:
            return torch.zeros((0, *row_shape(self.size)), dtype=torch.uint8)
        mapped = np.memmap(self.folder / "images.u8", np.uint8, mode="c", shape=(used, *row_shape(self.size)))
        return torch.from_numpy(mapped)

    def rows_of(self, paths: Sequence[Path], workers: int, check_stop: Callable[[], None] | None,
                progress: str | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Each file's row and whether it decoded, looked up (or decoded and appended first),
        and the rows in use."""
        stats = [file_identity(p) for p in paths]
        index = Index.load(self.index_path)
        rows, ok, missing = look_up(paths, stats, index)
        if missing:
            self.prepare()
            with StoreLock(self.folder / ".lock"):
                # Another process may have decoded them while this one waited for the lock.
                index = Index.load(self.index_path)
                rows, ok, missing = look_up(paths, stats, index)
                if missing:
                    self.append([paths[i] for i in missing], [stats[i] for i in missing], index, workers,
                                check_stop, progress)
                    rows, ok, missing = look_up(paths, stats, index)
        return rows, ok, index.used

    def append(self, paths: list[Path], stats: list[tuple[int, int]], index: Index, workers: int,
               check_stop: Callable[[], None] | None, progress: str | None) -> None:
        """Decode ``paths`` into new rows after the index's last, saving the index as it goes."""
        self.refuse_unless_room(len(paths))
        self.announce(len(paths), progress)
        entries, first = index.reserve([os.path.abspath(p) for p in paths]), index.used
        rows = np.arange(first, first + len(paths))
        self.truncate(first)
        identities = np.array(stats, np.int64).reshape(-1, 2)
        entered, saved_at, save_seconds = 0, time.monotonic(), 0.0

        def enter(file, end: int, ok: np.ndarray) -> None:
            nonlocal entered, saved_at, save_seconds
            index.enter(entries[entered:end], identities[entered:end], rows[entered:end], ok[entered:end])
            entered = end
            # Saving rewrites the whole index: at most a twentieth of the time goes to it.
            if end == len(paths) or time.monotonic() - saved_at > max(INDEX_EVERY_SECONDS, 20 * save_seconds):
                began = time.monotonic()
                self.save_index(file, index)
                saved_at, save_seconds = time.monotonic(), time.monotonic() - began

        self.write_rows(paths, rows, workers, check_stop, progress, enter)

    def write_rows(self, paths: list[Path], rows: np.ndarray, workers: int, check_stop: Callable[[], None] | None,
                   progress: str | None, after_batch: Callable | None = None) -> np.ndarray:
        """Decode ``paths`` into the given rows of images.u8; returns whether each decoded.
        ``after_batch(file, decoded so far, flags)`` is called as batches land."""
        ok = np.zeros(len(paths), bool)
        with open(self.folder / "images.u8", "r+b") as file:
            for start, images, batch_ok in decoded_batches(paths, self.size, self.draft, workers, check_stop, progress):
                end = start + len(images)
                if self.size:
                    for k in range(len(images)):  # a share's rows need not be contiguous
                        os.pwrite(file.fileno(), images[k].tobytes(), int(rows[start + k]) * self.row_bytes)
                ok[start:end] = batch_ok
                if after_batch is not None:
                    after_batch(file, end, ok)
        return ok

    def announce(self, images: int, progress: str | None, of: int | None = None) -> None:
        if progress is None:
            return
        count = f"{images} of {plural(of, 'image')}" if of is not None else plural(images, "image")
        print(f"{progress}: decoding {count} at {self.size} px into {self.folder} "
              f"({byte_size(images * self.row_bytes)})" if self.size else
              f"{progress}: checking {count} once (remembered in {self.folder})", file=sys.stderr, flush=True)

    def rows_shared(self, paths: Sequence[Path], share: Share, workers: int, check_stop: Callable[[], None] | None,
                    progress: str | None) -> tuple[np.ndarray, np.ndarray, int]:
        """``rows_of`` for the ``share.ranks`` processes of one machine (torchrun's local ranks), each
        decoding an equal share of what is missing. Rank 0 holds the lock and writes the index;
        every process calls this, and passes the same barriers."""
        rank, ranks, barrier = share.rank, share.ranks, share.barrier
        stats, lock = [file_identity(p) for p in paths], None
        if rank == 0:
            self.prepare()
            lock = StoreLock(self.folder / ".lock").__enter__()
        try:
            barrier()  # from here on, only these processes change the store
            index = Index.load(self.index_path)
            _, _, missing = look_up(paths, stats, index)
            first = index.used
            if missing:
                self.refuse_unless_room(len(missing))  # the same verdict in every process
                if rank == 0:
                    self.truncate(first)
            barrier()
            mine = missing[rank::ranks]
            if mine:
                self.announce(len(mine), progress, of=len(missing))
                ok = self.write_rows([paths[i] for i in mine], first + rank + ranks * np.arange(len(mine)),
                                     workers, check_stop, progress)
            if missing:
                write_atomic(self.folder / f"ok-{rank}.npy", lambda f: np.save(f, ok if mine else np.zeros(0, bool)))
            barrier()  # every share written
            if rank == 0 and missing:
                self.enter_shares(index, [paths[i] for i in missing], [stats[i] for i in missing], first, ranks)
            barrier()  # the index names them
        finally:
            if lock is not None:
                lock.__exit__()
        rows, ok, _ = look_up(paths, stats, index := Index.load(self.index_path))
        return rows, ok, index.used

    def enter_shares(self, index: Index, paths: list[Path], stats: list[tuple[int, int]], first: int,
                     ranks: int) -> None:
        """Index the rows the processes decoded (rank k's j-th: missing file k + j * ranks)."""
        ok = np.zeros(len(paths), bool)
        for rank in range(ranks):
            ok[rank::ranks] = np.load(self.folder / f"ok-{rank}.npy")
            (self.folder / f"ok-{rank}.npy").unlink()
        entries = index.reserve([os.path.abspath(p) for p in paths])
        index.enter(entries, np.array(stats, np.int64).reshape(-1, 2), first + np.arange(len(paths)), ok)
        with open(self.folder / "images.u8", "r+b") as file:
            self.save_index(file, index)

    def save_index(self, file, index: Index) -> None:
        file.flush()
        os.fsync(file.fileno())  # the rows reach the disk before the index that names them
        index.save(self.index_path)

    def refuse_unless_room(self, images: int) -> None:
        needed, free = images * self.row_bytes, free_bytes(self.folder)
        if free is not None and needed > free:
            raise ResnetError(f"the decoded cache needs {byte_size(needed)} more in {self.folder}, which has "
                              f"{byte_size(free)} free: set RESNET_CACHE to a folder with room, or train with "
                              "--pipeline classic, which decodes the images every epoch instead")


def look_up(paths: Sequence[Path], stats: list[tuple[int, int] | None],
            index: Index) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rows and flags of the files the index knows as they are now, and the positions of the
    others. A file that cannot even be stat'ed (gone, a broken link) is unreadable, not indexed."""
    where = index.positions()
    rows, ok, missing = np.zeros(len(paths), np.int64), np.zeros(len(paths), bool), []
    for i, (path, stat) in enumerate(zip(paths, stats)):
        if stat is None:
            continue
        j = where.get(os.path.abspath(path))
        if j is not None and index.sizes[j] == stat[0] and index.mtimes[j] == stat[1]:
            rows[i], ok[i] = index.rows[j], index.ok[j]
        else:
            missing.append(i)
    return rows, ok, missing


def file_identity(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns), what tells a file changed; None when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class StoreLock:
    """An exclusive flock on the store for a writer; waiting for another one says so."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def __enter__(self) -> StoreLock:
        if fcntl is None:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"resnet: waiting for another process decoding into {self.path.parent}", file=sys.stderr,
                  flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock


def readable_parts(parts: list[tuple[Source, DecodedImages]], strict: bool
                   ) -> tuple[list[tuple[Source, DecodedImages]], list[str]]:
    """Each (source, decoded) less the files that did not decode, and the paths of those, after
    one warning naming them (with ``strict``, an error)."""
    kept, bad = [], []
    for source, data in parts:
        ok = data.readable()
        if isinstance(source, ImageFiles) and not ok.all():
            bad += [str(source.paths[i]) for i in (~ok).nonzero().flatten().tolist()]
            source, data = source.subset(ok.nonzero().flatten().tolist()), data.subset(ok)
        kept.append((source, data))
    report_unreadable(bad, strict)
    return kept, bad
