"""Run directories: named, claimed by one process for the run's life, released on any exit.

A run directory holds one run. ``resnet train`` claims it with an exclusive ``flock`` on
``RUN/.lock`` before it reads any data, so a second process on the same directory is
refused at once, however close together the two start. The kernel drops the lock when
its process ends, however it ends (kill -9 included): a lock file left behind by a dead
process is free to take, and taking it over says whose it was. ``resnet calibrate`` takes
the same lock while it rewrites a run's checkpoints; the lock file names the command that
holds it, so a refused process is told which.

A fresh run that ends before its first checkpoint leaves no directory behind: there
would be nothing in it to resume.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from resnet.util import distributed
from resnet.config import TrainConfig
from resnet.util.distributed import Topology
from resnet.errors import ResnetError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded against a second process there
    fcntl = None

LOCK_NAME = ".lock"
CHECKPOINT = "last.pt"  # a run with this file can be resumed
RUN_FILES = ("config.json", "best.pt", "metrics.csv", "curves.png", "summary.json",  # what a run writes
             "lr_find.png")  # --lr auto


class ClaimRefused(ResnetError):
    """The directory is another process's, or holds something already."""


@dataclass
class RunDirectory:
    """A claimed run directory. ``lock`` is the open lock file (rank 0 only)."""

    path: Path
    fresh: bool  # a new run, not a resumed one
    created: bool = False  # this process made the folder
    lock: int | None = None

    def release(self, failed: bool) -> None:
        """Unlock; a fresh run that failed before its first checkpoint is removed."""
        if self.lock is None:
            return
        discard = failed and self.fresh and not (self.path / CHECKPOINT).exists()
        if discard:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        (self.path / LOCK_NAME).unlink(missing_ok=True)
        os.close(self.lock)
        self.lock = None
        if discard and self.created:
            try:
                self.path.rmdir()
            except OSError:  # something else is in it now: leave it
                pass


@contextmanager
def claimed_run_dir(config: TrainConfig, resume: Path | None, topology: Topology) -> Iterator[RunDirectory]:
    """The run's directory, claimed for the ``with`` block (by rank 0, which chooses it
    for every rank: a timestamp differs between processes) and released at its end."""
    claimed, problem = None, None
    if topology.is_main:
        try:
            claimed = claim_existing(resume) if resume is not None else claim_fresh(config)
        except ResnetError as error:
            problem = str(error)
    path, problem = distributed.all_gather_objects((claimed and str(claimed.path), problem), topology)[0]
    if problem is not None:
        raise ResnetError(problem)
    run_dir = claimed or RunDirectory(Path(path), fresh=resume is None)
    try:
        yield run_dir
    except BaseException:
        run_dir.release(failed=True)
        raise
    run_dir.release(failed=False)


def claim_fresh(config: TrainConfig) -> RunDirectory:
    """``--out``, or ``runs/<dataset>-<arch>-<timestamp>`` with a suffix when two runs
    start in the same second."""
    if config.out:
        return claim_empty(Path(config.out))
    base = Path("runs") / f"{config.dataset}-{config.arch}-{datetime.now():%Y%m%d-%H%M%S}"
    for n in range(1, 100):
        try:
            return claim_empty(base if n == 1 else base.with_name(f"{base.name}-{n}"))
        except ClaimRefused:
            continue
    raise ResnetError(f"{base} and 98 more names like it are taken; choose a directory with --out")


def claim_empty(path: Path) -> RunDirectory:
    """Create ``path`` (or take an empty one), lock it, and check it holds nothing else."""
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ResnetError(f"--out {path}: {blocking} is a file, not a directory; choose another --out")
    existed = path.is_dir()
    if existed:
        refuse_unless_empty(path)  # before a lock file is made in someone's folder
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResnetError(f"cannot create the run directory {path}: {error.strerror or error}") from None
    lock, left_by = lock_run_dir(path)
    try:
        refuse_unless_empty(path)  # again, now that no other process can write to it
    except ClaimRefused:
        if lock is not None:
            (path / LOCK_NAME).unlink(missing_ok=True)
            os.close(lock)
        raise
    return take(RunDirectory(path, fresh=True, created=not existed, lock=lock), left_by)


def refuse_unless_empty(path: Path) -> None:
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        raise ClaimRefused(f"{path} already exists and is not empty; continue it with --resume {path} "
                           "or choose another --out")


def claim_existing(path: Path, command: str = "train") -> RunDirectory:
    """Lock the directory of a run, for the resnet ``command`` that will change it (a resumed
    train, or calibrate); the lock file names that command to whoever else tries."""
    lock, left_by = lock_run_dir(path)
    return take(RunDirectory(path, fresh=False, lock=lock), left_by, command)


def take(run_dir: RunDirectory, left_by: str, command: str = "train") -> RunDirectory:
    """Write this process into the lock file, saying so when it takes over a dead one's."""
    if left_by:
        warnings.warn(f"{run_dir.path}: taking over the lock left by {left_by}, which is no longer running",
                      stacklevel=2)
    if run_dir.lock is not None:
        os.ftruncate(run_dir.lock, 0)
        os.pwrite(run_dir.lock, holder(command).encode(), 0)
    return run_dir


def holder(command: str) -> str:
    return f"resnet {command} (process {os.getpid()} on {socket.gethostname()})"


def holder_in_words(written: str) -> str:
    """What a lock file says of its holder, after "another": a lock written before it named
    the command (or an empty one) says only that it is a resnet process."""
    if written.startswith("resnet "):
        return written
    return f"resnet process ({written})" if written else "resnet process"


def lock_run_dir(path: Path) -> tuple[int | None, str]:
    """An exclusive lock on ``path/.lock``: its descriptor and who left the file (empty when
    nobody did). Held by a live process: a one-line error naming it."""
    if fcntl is None:
        return None, ""
    lock_path = path / LOCK_NAME
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ResnetError(f"cannot lock the run directory {path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder_in_words(read_holder(fd))
            os.close(fd)
            raise ClaimRefused(f"{path} is in use by another {who}; wait for it to end, "
                               "or choose another directory") from None
        # The last holder removes the file as it lets go: a lock taken on the file it
        # removed guards nothing, so lock the one that is there now.
        if same_file(fd, lock_path):
            return fd, read_holder(fd)
        os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def read_holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip()
