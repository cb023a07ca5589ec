"""How ``resnet train`` copes with ImageNet-shaped image folders, through the command line only.

    python benchmarks/scale.py --root ROOT --sizes 10000 40000 160000
    python benchmarks/scale.py --root ROOT --quick     # 2,000 images in 20 classes, to try the script

For each N it writes (once, then reuses) a synthetic folder ``ROOT/nN/{train,val}/<class>/<i>.JPEG``
under ``--root`` (required: a folder with room for them, see the end): 1,000 classes, N training
images in all and N/50 validation images (at least one per class), JPEGs of 400-500 x 300-375
(a quarter portrait) at quality 85, ~30-90 KB each, as ImageNet's. Then it runs ``resnet train
--dataset imagefolder --data-dir ROOT/nN --epochs 1 --batch-size 64 --image-size 112 --quiet`` as a
subprocess and times its start-up: from the command's start to the line starting with ``run ``,
which a run prints just before its first training step.
The run is then stopped with SIGTERM, and exits on its own.

- **cold decode**: a fresh, empty ``RESNET_CACHE``, on all the CPUs this script may use, then on one
  (``taskset -c CPU``, ``OMP_NUM_THREADS=1``): seconds, images/s (N / seconds), the speed-up. Cold
  means the decoded cache, not the disk: the JPEGs are in the page cache after their generation.
- **warm start**: the same command with the cache the cold run filled: seconds, ms per training image,
  and, in a second warm run under ``strace -f -e trace=openat``, how many of the JPEGs were opened (a
  warm start should open none).
- **peak memory**: a cold decode inside a fresh cgroup-v1 memory group (``--memory-limit``): peaks of
  ``rss`` (anonymous memory) and ``cache`` (page cache charged to the run, such as the cache file it
  writes; the JPEGs' pages were charged to their generation), sampled every 0.2 s,
  ``memory.max_usage_in_bytes``, ``memory.failcnt``, and whether the OOM killer struck.
- **cache size**: the bytes under ``RESNET_CACHE`` after the cold decode.

Every figure is also extrapolated to ImageNet-1k's 1,281,167 training images, linearly: in proportion
to the largest N measured (start-up costs that do not grow with N are scaled too, so it overstates
them) and, given two sizes or more, along the line through the two largest (a fixed part plus a part
per image). It prints a table and writes JSON (``--out``) with the commands, the machine and every
measurement. A run that fails, or times out (``--timeout``), is reported with the last lines it wrote;
Ctrl-C or SIGTERM kills every child process and removes the caches and the cgroup.

Run it with nothing else on the machine; the cgroup needs root. Disk: a folder takes ~60 KB per image,
a cache ~50 KB per training image at 112 px (caches are deleted once measured).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IMAGENET_TRAIN = 1_281_167
GENERATOR_VERSION = 1  # bump when the generated images change
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
SAMPLE_SECONDS = 0.2
STOP_GRACE = 180  # seconds a run has, after SIGTERM, to finish its step, save and exit
RUN_LINE = "run "
TAIL_LINES = 15

# --- the synthetic folder ----------------------------------------------------------------


@dataclass(frozen=True)
class FolderSpec:
    images: int  # training images in all
    classes: int = 1000

    @property
    def train_per_class(self) -> int:
        return max(1, self.images // self.classes)

    @property
    def val_per_class(self) -> int:
        return max(1, self.images // 50 // self.classes)

    @property
    def name(self) -> str:
        return f"n{self.images}" + ("" if self.classes == 1000 else f"-c{self.classes}")

    def describe(self) -> dict[str, Any]:
        return {"train_images": self.train_per_class * self.classes, "val_images": self.val_per_class * self.classes,
                "classes": self.classes, "generator_version": GENERATOR_VERSION}


def class_name(label: int) -> str:
    return f"n{label:08d}"


def draw_image(split: int, label: int, index: int) -> Image.Image:
    """A per-class colour gradient at a random angle, a random rectangle or ellipse, and fine
    noise of a random amplitude: cheap to make, yet ~30-90 KB as a JPEG at quality 85."""
    rng = np.random.default_rng([GENERATOR_VERSION, split, label, index])
    colours = np.random.default_rng([GENERATOR_VERSION, label]).integers(0, 256, (2, 3))
    width, height = int(rng.integers(400, 501)), int(rng.integers(300, 376))
    if rng.random() < 0.25:
        width, height = height, width  # portrait
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = ((t - t.min()) / (t.max() - t.min() + 1e-6))[..., None]
    image = Image.fromarray((colours[0] * (1 - t) + colours[1] * t).astype(np.uint8))
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    box = [x0, y0, x0 + int(rng.integers(width // 8, width // 2)), y0 + int(rng.integers(height // 8, height // 2))]
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    amplitude = int(rng.integers(16, 49))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-amplitude, amplitude + 1, (height, width, 3),
                                                               dtype=np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_image(job: tuple[str, int, int, int]) -> int:
    """Writes one JPEG unless it exists, through a hidden temporary name and a rename, so a
    killed generation leaves no half file (``resnet train`` skips hidden files). 1 if written."""
    path, split, label, index = job
    if os.path.exists(path):
        return 0
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    draw_image(split, label, index).save(temporary, format="JPEG", quality=85)
    os.replace(temporary, path)
    return 1


def image_jobs(root: Path, spec: FolderSpec) -> list[tuple[str, int, int, int]]:
    """Every file of the folder as (path, split, label, index); makes the class folders and
    removes temporary files a killed generation left behind."""
    jobs = []
    for split, (split_name, count) in enumerate((("train", spec.train_per_class), ("val", spec.val_per_class))):
        for label in range(spec.classes):
            folder = root / split_name / class_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            jobs += [(str(folder / f"{index}.JPEG"), split, label, index) for index in range(count)]
    return jobs


def pool_signals() -> None:
    """Ctrl-C is the main process's (it terminates the pool); the pool's SIGTERM ends a worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def generate(root: Path, spec: FolderSpec, processes: int) -> dict[str, Any]:
    """The folder for ``spec`` under ``root``: made in parallel, resumed where it stopped, and
    reused as it is once ``generated.json`` says it is complete."""
    marker = root / "generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("spec") == spec.describe():
        return json.loads(marker.read_text())
    jobs = image_jobs(root, spec)
    log(f"generating {len(jobs)} JPEGs under {root} with {processes} processes")
    start, written = time.perf_counter(), 0
    with Pool(processes, initializer=pool_signals) as pool:
        for done, new in enumerate(pool.imap_unordered(write_image, jobs, chunksize=32), 1):
            written += new
            if done % max(1, len(jobs) // 10) == 0:
                log(f"  {done}/{len(jobs)} files ({written} written, {time.perf_counter() - start:.0f} s)")
    sizes = [os.path.getsize(path) for path, *_ in jobs]
    info = {"spec": spec.describe(), "path": str(root), "files": len(jobs), "bytes": sum(sizes),
            "mean_file_bytes": sum(sizes) / len(sizes), "min_file_bytes": min(sizes), "max_file_bytes": max(sizes),
            "written_now": written, "seconds_now": time.perf_counter() - start}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


# --- running resnet train ------------------------------------------------------------------

LIVE: set[subprocess.Popen] = set()  # children to kill if the script is interrupted


def log(message: str) -> None:
    print(f"scale: {message}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    label: str
    command: list[str]
    env: dict[str, str]  # the variables set for this run
    seconds: float | None = None  # from the start to the run line
    run_line: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None  # why there is no figure
    stderr_tail: list[str] = field(default_factory=list)
    stdout_tail: list[str] = field(default_factory=list)
    leftover_processes: bool = False  # some of its process group outlived it

    @property
    def ok(self) -> bool:
        return self.seconds is not None


def read_lines(stream: Any, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((time.perf_counter(), line.rstrip("\n")))
    lines.put((time.perf_counter(), None))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the child's whole process group (its session, started for it)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def child_pid(pid: int, timeout: float = 30.0) -> int:
    """The first child of ``pid`` (the program strace runs), or ``pid`` if none appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                return int(stat.parent.name)
        time.sleep(0.05)
    return pid


@contextmanager
def started(command: list[str], env: dict[str, str], stderr_path: Path) -> Iterator[subprocess.Popen]:
    """The child in a session of its own (a Ctrl-C of the terminal reaches this script only),
    killed with its whole group if it is still there when the block ends."""
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, errors="replace", env={**os.environ, **env}, start_new_session=True)
    LIVE.add(process)
    try:
        yield process
    finally:
        if process.poll() is None or group_alive(process.pid):
            kill_group(process)
        process.wait()
        LIVE.discard(process)


def wait_for_run_line(lines: queue.Queue, start: float, deadline: float, result: RunResult) -> bool:
    """Reads stdout until the run line (True) or its end or the deadline (False)."""
    while True:
        try:
            when, line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            result.timed_out, result.error = True, "timed out before the run line"
            return False
        if line is None:
            result.error = "exited before the run line"
            return False
        result.stdout_tail = (result.stdout_tail + [line])[-TAIL_LINES:]
        if line.startswith(RUN_LINE):
            result.seconds, result.run_line = when - start, line
            return True


def stop(process: subprocess.Popen, target: int, result: RunResult, grace: float = STOP_GRACE) -> None:
    """SIGTERM to the run (``target``), then its exit; SIGKILL to its group if it takes too long."""
    try:
        os.kill(target, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        result.error = (result.error + "; " if result.error else "") + f"still running {grace:.0f} s after SIGTERM"
        kill_group(process)
    time.sleep(0.2)
    result.leftover_processes = group_alive(process.pid)


def run_train(label: str, command: list[str], env: dict[str, str], work: Path, timeout: float,
              traced: bool = False, on_start: Any = None, on_run_line: Any = None) -> RunResult:
    """Runs ``command`` until its run line, then stops it. ``traced``: the command is strace's, and
    the signal goes to the program it runs. ``on_start()`` is called right after the start,
    ``on_run_line()`` when the run line comes."""
    result = RunResult(label, command, env)
    stderr_path = work / f"{label}.stderr"
    lines: queue.Queue = queue.Queue()
    start = time.perf_counter()
    with started(command, env, stderr_path) as process:
        if on_start is not None:
            on_start()
        reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        reached = wait_for_run_line(lines, start, start + timeout, result)
        if reached and on_run_line is not None:
            on_run_line()
        if reached or result.timed_out:
            stop(process, child_pid(process.pid) if traced else process.pid, result, STOP_GRACE if reached else 10)
        process.wait()
        reader.join(timeout=10)
        result.exit_code = process.returncode
    result.stderr_tail = tail(stderr_path)
    return result


def tail(path: Path, count: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def resnet_command() -> list[str]:
    """The ``resnet`` console script next to this Python, else ``python -m resnet``."""
    script = Path(sys.executable).parent / "resnet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "resnet"]


def train_command(data_dir: Path, out: Path, workers: int | str, extra: list[str]) -> list[str]:
    return [*resnet_command(), "train", "--dataset", "imagefolder", "--data-dir", str(data_dir), "--epochs", "1",
            "--batch-size", "64", "--image-size", "112", "--workers", str(workers), "--out", str(out), "--quiet",
            *extra]


def tree_bytes(folder: Path) -> int:
    """Bytes of the regular files below ``folder`` (a ``du``-like walk, apparent sizes)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total


# --- memory cgroup ------------------------------------------------------------------------


def read_stat(group: Path) -> dict[str, int]:
    values = {}
    for line in (group / "memory.stat").read_text().splitlines():
        key, value = line.split()
        values[key] = int(value)
    return values


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def oom_kills(group: Path) -> int | None:
    try:
        for line in (group / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryGroup:
    """A fresh cgroup-v1 memory group with a limit, sampled every SAMPLE_SECONDS while in use."""

    def __init__(self, limit: int) -> None:
        self.path = CGROUP_ROOT / f"resnet-scale-{os.getpid()}-{time.monotonic_ns()}"
        self.path.mkdir()
        try:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError:
            self.path.rmdir()
            raise
        if (self.path / "memory.memsw.limit_in_bytes").exists():
            try:  # no escape to swap either, where the kernel accounts for it
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            except OSError:
                pass
        self.limit, self.peaks, self.samples = limit, {"rss": 0, "cache": 0, "mapped_file": 0, "usage": 0}, 0
        self.at_run_line: dict[str, int] | None = None
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def wrap(self, command: list[str]) -> list[str]:
        """The command joins the group before its first instruction: sh writes its own PID, then execs."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *command]

    def sample(self) -> None:
        while not self.done.is_set():
            try:
                stat = read_stat(self.path)
                usage = read_int(self.path / "memory.usage_in_bytes") or 0
            except (OSError, ValueError):
                break
            for key in ("rss", "cache", "mapped_file"):
                self.peaks[key] = max(self.peaks[key], stat.get(f"total_{key}", stat.get(key, 0)))
            self.peaks["usage"] = max(self.peaks["usage"], usage)
            self.samples += 1
            self.done.wait(SAMPLE_SECONDS)

    def snapshot(self) -> None:
        """The peaks so far: those of the decode, before the training step and the stop."""
        self.at_run_line = dict(self.peaks)

    def finish(self) -> dict[str, Any]:
        self.done.set()
        self.sampler.join(timeout=5)
        return {"limit_bytes": self.limit, "peak_rss_bytes": self.peaks["rss"], "peak_cache_bytes": self.peaks["cache"],
                "peak_mapped_file_bytes": self.peaks["mapped_file"], "peak_sampled_usage_bytes": self.peaks["usage"],
                "max_usage_in_bytes": read_int(self.path / "memory.max_usage_in_bytes"),
                "failcnt": read_int(self.path / "memory.failcnt"), "oom_kills": oom_kills(self.path),
                "peaks_at_run_line": self.at_run_line, "samples": self.samples, "sample_seconds": SAMPLE_SECONDS}

    def remove(self) -> None:
        """rmdir, once every process in the group is gone (stragglers are killed)."""
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()] if self.path.exists() else []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        log(f"could not remove the cgroup {self.path}")


GROUPS: set[MemoryGroup] = set()  # groups to remove if the script is interrupted


def cgroup_problem() -> str | None:
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup-v1 memory controller at {CGROUP_ROOT}"
    if not os.access(CGROUP_ROOT, os.W_OK):
        return f"{CGROUP_ROOT} is not writable (run as root)"
    return None


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Options:
    sizes: list[int]
    classes: int
    root: Path
    timeout: float
    memory_limit: int
    workers: int | None
    one_cpu: int
    extra: list[str]


def affinity() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def fresh_work(options: Options, spec: FolderSpec, label: str) -> Path:
    """An empty folder for one measurement: its RESNET_CACHE (cache/) and its run directories."""
    work = options.root / "work" / f"{spec.name}-{label}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "cache").mkdir(parents=True)
    return work


def report_failure(result: RunResult) -> None:
    log(f"{result.label}: FAILED ({result.error}; exit status {result.exit_code})")
    for line in result.stderr_tail or result.stdout_tail:
        log(f"    {line}")


def finish_run(result: RunResult) -> dict[str, Any]:
    if result.ok:
        log(f"{result.label}: {result.seconds:.1f} s to the run line (exit status {result.exit_code})")
    else:
        report_failure(result)
    return asdict(result)


def cold_run(options: Options, spec: FolderSpec, folder: Path, label: str, one_core: bool) -> tuple[dict, Path]:
    """A cold decode into a fresh cache: the run and the cache folder it filled."""
    work = fresh_work(options, spec, label)
    env = {"RESNET_CACHE": str(work / "cache")}
    workers = options.workers or (1 if one_core else len(affinity()))
    command = train_command(folder, work / "run", workers, options.extra)
    if one_core:
        command = ["taskset", "-c", str(options.one_cpu), *command]
        env["OMP_NUM_THREADS"] = "1"
    result = run_train(label, command, env, work, options.timeout)
    record = finish_run(result)
    record["workers"], record["cache_bytes"] = workers, tree_bytes(work / "cache")
    if result.ok:
        record["images_per_s"] = spec.train_per_class * spec.classes / result.seconds
    return record, work


def warm_run(options: Options, spec: FolderSpec, folder: Path, cold: dict, work: Path) -> dict:
    """The cold run's command again on the cache it filled, into a new run directory."""
    command = train_command(folder, work / "run-warm", cold["workers"], options.extra)
    record = finish_run(run_train("warm", command, cold["env"], work, options.timeout))
    if record["seconds"] is not None:
        record["ms_per_file"] = 1000 * record["seconds"] / (spec.train_per_class * spec.classes)
    return record


def count_jpeg_opens(trace: Path, folder: Path) -> dict[str, int]:
    pattern = re.compile(r'openat\([^,]*, "((?:[^"\\]|\\.)*)"')
    opened: list[str] = []
    for line in trace.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match and match.group(1).startswith(str(folder)) and match.group(1).lower().endswith(".jpeg"):
            opened.append(match.group(1))
    return {"jpeg_openat_calls": len(opened), "distinct_jpegs_opened": len(set(opened))}


def traced_warm_run(options: Options, folder: Path, cold: dict, work: Path) -> dict:
    """The warm run under strace, counting the JPEGs under the folder it opens."""
    if shutil.which("strace") is None:
        log("warm (strace): skipped, strace is not installed (apt-get install -y strace)")
        return {"skipped": "strace is not installed"}
    trace = work / "warm.strace"
    command = ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=openat", "-o", str(trace),
               *train_command(folder, work / "run-traced", cold["workers"], options.extra)]
    record = finish_run(run_train("warm-strace", command, cold["env"], work, options.timeout, traced=True))
    if trace.exists():
        record.update(count_jpeg_opens(trace, folder))
        log(f"warm (strace): {record['jpeg_openat_calls']} openat calls on JPEGs under {folder} "
            f"({record['distinct_jpegs_opened']} distinct files)")
    return record


def memory_run(options: Options, spec: FolderSpec, folder: Path) -> dict:
    """A cold decode inside a fresh memory cgroup, with its peaks."""
    problem = cgroup_problem()
    if problem:
        log(f"memory: skipped, {problem}")
        return {"skipped": problem}
    work = fresh_work(options, spec, "memory")
    env = {"RESNET_CACHE": str(work / "cache")}
    workers = options.workers or len(affinity())
    try:
        group = MemoryGroup(options.memory_limit)
    except OSError as error:
        log(f"memory: skipped, no memory cgroup ({error})")
        return {"skipped": f"no memory cgroup: {error}"}
    GROUPS.add(group)
    try:
        command = group.wrap(train_command(folder, work / "run", workers, options.extra))
        result = run_train("memory", command, env, work, options.timeout, on_start=group.sampler.start,
                           on_run_line=group.snapshot)
        memory = group.finish()
    finally:
        group.remove()
        GROUPS.discard(group)
    record = finish_run(result)
    record.update(memory, workers=workers, cache_bytes=tree_bytes(work / "cache"),
                  oom_killed=bool(memory["oom_kills"]) if memory["oom_kills"] is not None
                  else result.exit_code in (137, -9) and not result.timed_out)
    log(f"memory: peak rss {gib(memory['peak_rss_bytes'])}, peak cache {gib(memory['peak_cache_bytes'])}, "
        f"max usage {gib(memory['max_usage_in_bytes'])}, failcnt {memory['failcnt']}, "
        f"oom killed: {record['oom_killed']}")
    shutil.rmtree(work, ignore_errors=True)
    return record


def measure_size(options: Options, spec: FolderSpec, result: dict[str, Any]) -> None:
    """Every measurement for one folder size, into ``result`` as each is made (so an interrupted
    script still reports those it has)."""
    folder = (options.root / spec.name).resolve()
    result["images"] = spec.train_per_class * spec.classes
    result["folder"] = generate(folder, spec, len(affinity()))
    log(f"{spec.name}: {result['folder']['files']} files, {result['folder']['mean_file_bytes'] / 1000:.0f} KB "
        "on average")
    cold, work = cold_run(options, spec, folder, "cold", one_core=False)
    result["cold"] = cold
    if cold["seconds"] is not None:
        result["warm"] = warm_run(options, spec, folder, cold, work)
        result["warm_strace"] = traced_warm_run(options, folder, cold, work)
    shutil.rmtree(work, ignore_errors=True)
    one, work = cold_run(options, spec, folder, "cold-1cpu", one_core=True)
    shutil.rmtree(work, ignore_errors=True)
    result["cold_1cpu"] = one
    if cold["seconds"] is not None and one["seconds"] is not None:
        result["speedup"] = one["seconds"] / cold["seconds"]
    result["memory"] = memory_run(options, spec, folder)
    measure_decode(options, folder, result)


# The decode and the warm look-up alone, in a process of their own: the training split at the
# cache size of --image-size 112 (128 px, JPEGs in draft mode), as resnet train decodes it.
DECODE_ONLY = """
import json, sys, time
from resnet.data.cache import decode
from resnet.data.datasets import load_splits
root, workers = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
train = load_splits("imagefolder", root).train
listed = time.perf_counter()
decode(train, 128, workers=workers, draft=True)
decoded = time.perf_counter()
again = load_splits("imagefolder", root).train
decode(again, 128, workers=workers, draft=True)
warm = time.perf_counter()
print(json.dumps({"images": len(train), "list_seconds": listed - start, "decode_seconds": decoded - listed,
                  "warm_seconds": warm - decoded}))
"""


def decode_only(folder: Path, one_core: bool, cpu: int) -> dict[str, Any]:
    """Seconds to decode the training split (fresh cache), and to list and look it up again."""
    workers = 1 if one_core else len(affinity())
    command = [sys.executable, "-c", DECODE_ONLY, str(folder), str(workers)]
    if one_core:
        command = ["taskset", "-c", str(cpu), *command]
    with tempfile.TemporaryDirectory(prefix="resnet-scale-decode-") as cache:
        env = {**os.environ, "RESNET_CACHE": cache, **({"OMP_NUM_THREADS": "1"} if one_core else {})}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-3:]}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures.update(workers=workers, images_per_s=figures["images"] / figures["decode_seconds"],
                   warm_ms_per_file=1000 * figures["warm_seconds"] / figures["images"])
    return figures


def measure_decode(options: Options, folder: Path, result: dict[str, Any]) -> None:
    two = decode_only(folder, False, options.one_cpu)
    one = decode_only(folder, True, options.one_cpu)
    result["decode_only"] = {"all_cpus": two, "one_cpu": one}
    if "error" not in two and "error" not in one:
        result["decode_only"]["speedup"] = one["decode_seconds"] / two["decode_seconds"]
        log(f"decode alone: {two['images_per_s']:.0f} images/s on {two['workers']} CPUs, {one['images_per_s']:.0f} "
            f"on one ({result['decode_only']['speedup']:.2f}x); a warm list and look-up "
            f"{two['warm_ms_per_file']:.3f} ms a file")
    else:
        log(f"decode alone failed: {two.get('error') or one.get('error')}")


def figure(result: dict[str, Any], *keys: str) -> float | None:
    """``result[keys[0]][keys[1]]...`` if it is a number, else None."""
    value: Any = result
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measured(result: dict[str, Any], *keys: str) -> float | None:
    """``figure``, but None where the run it comes from did not reach its run line (the peaks of
    a run killed by the OOM killer are the limit's, not the run's)."""
    run = result.get(keys[0])
    if isinstance(run, dict) and "seconds" in run and run["seconds"] is None:
        return None
    return figure(result, *keys)


SCALED = {  # figures that grow with N, as (name, path in a size's result)
    "cold_seconds": ("cold", "seconds"), "cold_1cpu_seconds": ("cold_1cpu", "seconds"),
    "warm_seconds": ("warm", "seconds"), "cache_bytes": ("cold", "cache_bytes"),
    "peak_rss_bytes": ("memory", "peak_rss_bytes"), "peak_cache_bytes": ("memory", "peak_cache_bytes"),
    "max_usage_bytes": ("memory", "max_usage_in_bytes"), "jpeg_openat_calls": ("warm_strace", "jpeg_openat_calls"),
}
KEPT = {"cold_images_per_s": ("cold", "images_per_s"), "cold_1cpu_images_per_s": ("cold_1cpu", "images_per_s"),
        "warm_ms_per_file": ("warm", "ms_per_file"), "speedup": ("speedup",)}


def extrapolate(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest N's figures scaled in proportion to ImageNet-1k's training set."""
    if not results:
        return None
    largest = max(results, key=lambda r: r["images"])
    factor = IMAGENET_TRAIN / largest["images"]
    scaled = {name: None if measured(largest, *path) is None else measured(largest, *path) * factor
              for name, path in SCALED.items()}
    scaled.update({name: measured(largest, *path) for name, path in KEPT.items()})
    return {"images": IMAGENET_TRAIN, "from_images": largest["images"], "factor": factor, **scaled,
            "method": (f"linear: the figures at N={largest['images']} times {factor:.2f} (rates, ms per file and "
                       "the speed-up kept); fixed start-up costs and memory are scaled too, so these are upper "
                       "bounds where those dominate")}


def extrapolate_fit(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The line through the two largest N's figures (a fixed part plus a part per image), at
    ImageNet-1k's size: closer than ``extrapolate`` where a fixed part is large."""
    if len({r["images"] for r in results}) < 2:
        return None
    small, large = sorted(results, key=lambda r: r["images"])[-2:]
    fitted: dict[str, Any] = {}
    for name, path in SCALED.items():
        a, b = measured(small, *path), measured(large, *path)
        slope = None if a is None or b is None else (b - a) / (large["images"] - small["images"])
        fitted[name] = None if slope is None else b + slope * (IMAGENET_TRAIN - large["images"])
    for name, seconds in (("cold_images_per_s", "cold_seconds"), ("cold_1cpu_images_per_s", "cold_1cpu_seconds")):
        fitted[name] = IMAGENET_TRAIN / fitted[seconds] if fitted[seconds] else None
    warm = fitted["warm_seconds"]
    fitted["warm_ms_per_file"] = None if warm is None else 1000 * warm / IMAGENET_TRAIN
    cold, one = fitted["cold_seconds"], fitted["cold_1cpu_seconds"]
    fitted["speedup"] = one / cold if cold and one else None
    return {"images": IMAGENET_TRAIN, "from_images": [small["images"], large["images"]], **fitted,
            "method": f"the line through the figures at N={small['images']} and N={large['images']}"}


# --- machine, table, JSON ---------------------------------------------------------------------


def command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_info() -> dict[str, Any]:
    fields = dict(line.split(":", 1) for line in command_output(["lscpu"]).splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    if not flags:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        flags = set(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)[0].split()) if "flags" in cpuinfo else set()
    return {"model": fields.get("Model name", "").strip() or None, "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx")), "cpus": os.cpu_count(), "affinity": affinity()}


def version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    return {"cpu": cpu_info(), "torch": version("torch"), "torchvision": version("torchvision"),
            "resnet_lab": version("resnet-lab"), "python": sys.version.split()[0], "kernel": os.uname().release,
            "load_average": list(os.getloadavg()),
            "git_commit": command_output(["git", "-C", str(repo), "rev-parse", "HEAD"]).strip() or None,
            "git_changed_files": command_output(["git", "-C", str(repo), "status", "--porcelain"]).splitlines()}


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


WIDTHS = [10, 9, 7, 9, 7, 7, 8, 8, 8, 10, 10, 10, 8, 5, 10]  # the table's columns


def table_row(label: str, f: dict[str, Any]) -> str:
    cells = [label, cell(f["cold_seconds"], ".1f"), cell(f["cold_images_per_s"], ".0f"),
             cell(f["cold_1cpu_seconds"], ".1f"), cell(f["cold_1cpu_images_per_s"], ".0f"), cell(f["speedup"], ".2f"),
             cell(f["warm_seconds"], ".1f"), cell(f["warm_ms_per_file"], ".3f"), cell(f["jpeg_openat_calls"], ".0f"),
             gib(f["peak_rss_bytes"]), gib(f["peak_cache_bytes"]), gib(f["max_usage_bytes"]),
             str(f.get("failcnt", "-")), str(f.get("oom", "-")), gib(f["cache_bytes"])]
    return " ".join(f"{text:>{width}}" for text, width in zip(cells, WIDTHS))


def size_figures(result: dict[str, Any]) -> dict[str, Any]:
    figures = {name: figure(result, *path) for name, path in {**SCALED, **KEPT}.items()}
    memory = result.get("memory", {})
    figures["failcnt"] = memory.get("failcnt", "-")
    figures["oom"] = {True: "yes", False: "no"}.get(memory.get("oom_killed"), "-")
    return figures


def format_table(report: dict[str, Any]) -> str:
    cpus = len(report["machine"]["cpu"]["affinity"])
    names = ["images", f"cold {cpus}cpu", "img/s", "cold 1cpu", "img/s", "speedup", "warm s", "ms/file", "JPEGs",
             "peak rss", "peak cache", "max usage", "failcnt", "OOM", "cache"]
    header = " ".join(f"{name:>{width}}" for name, width in zip(names, WIDTHS))
    lines = [header] + [table_row(str(r["images"]), size_figures(r)) for r in report["sizes"]]
    for key, mark in (("extrapolated", "*"), ("extrapolated_fit", "+")):
        if report.get(key):
            lines.append(table_row(f"ImageNet{mark}", {**report[key], "failcnt": "", "oom": ""}))
    for key, mark in (("extrapolated", "*"), ("extrapolated_fit", "+")):
        if report.get(key):
            lines.append(f"{mark} {IMAGENET_TRAIN} images: {report[key]['method']}")
    lines.append("cold/warm: seconds from the command's start to its 'run ' line; JPEGs: openat calls on the "
                 "folder's JPEGs in a warm start (strace); memory: a cold run in a cgroup limited to "
                 f"{gib(report['options']['memory_limit'])}; cache: bytes under RESNET_CACHE after the cold run")
    lines += [f"failed: {item}" for item in failures(report)]
    return "\n".join(lines)


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{r['images']}: {run['label']} ({run['error']})" for r in report["sizes"]
            for run in (r.get(k) for k in ("cold", "cold_1cpu", "warm", "warm_strace", "memory"))
            if isinstance(run, dict) and run.get("error")]


def default_out(quick: bool) -> Path:
    name = f"scale-{datetime.now():%Y-%m-%d}" + ("-quick" if quick else "")
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    return out.with_name(f"{name}-{datetime.now():%H%M%S}.json") if out.exists() else out


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, out)


# --- the command line ----------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 2G, 1500M, 2147483648)")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    first, _, rest = __doc__.partition("\n")
    parser = argparse.ArgumentParser(description=first, epilog=rest.strip("\n"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000, 160000],
                        help="training images per folder (N/1000 per class)")
    parser.add_argument("--quick", action="store_true", help="N=2000 in 20 classes, to try the script")
    parser.add_argument("--root", type=Path, required=True,
                        help="where the folders are made (and the caches and runs, under ROOT/work)")
    parser.add_argument("--out", type=Path, help="the JSON (default: benchmarks/results/scale-<date>.json)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a run has to reach its run line")
    parser.add_argument("--memory-limit", type=parse_bytes, default=2 * 2**30, help="the cgroup's limit (2G)")
    parser.add_argument("--workers", type=int, help="resnet train --workers (default: the run's CPUs)")
    parser.add_argument("--one-cpu", type=int, help="the CPU of the one-core run (default: the first allowed)")
    parser.add_argument("--extra-args", default="", help="more resnet train options, as one string")
    return parser.parse_args(argv)


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # SIGTERM cleans up as Ctrl-C does


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One script at a time per --root: two would share its work folders and the CPUs."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"scale: another scale.py is using {root}") from None
        yield


def cleanup(work_root: Path) -> None:
    """Kills every child still running, removes every memory group and the caches (after a Ctrl-C)."""
    for process in list(LIVE):
        kill_group(process)
    for group in list(GROUPS):
        group.done.set()
        group.remove()
    shutil.rmtree(work_root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, classes = ([2000], 20) if args.quick else (args.sizes, 1000)
    options = Options(sizes, classes, args.root, args.timeout, args.memory_limit, args.workers,
                      affinity()[0] if args.one_cpu is None else args.one_cpu, shlex.split(args.extra_args))
    out = args.out or default_out(args.quick)
    report: dict[str, Any] = {"date": datetime.now().isoformat(timespec="seconds"), "argv": sys.argv,
                              "options": {**asdict(options), "root": str(options.root)}, "machine": machine_info(),
                              "train_command": shlex.join(train_command(Path("ROOT/nN"), Path("OUT"), "W",
                                                                        options.extra)),
                              "sizes": []}
    status = 0
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with root_lock(options.root):
            for n in sizes:
                report["sizes"].append({"images": n})
                measure_size(options, FolderSpec(n, classes), report["sizes"][-1])
        shutil.rmtree(options.root / "work", ignore_errors=True)
    except KeyboardInterrupt:
        cleanup(options.root / "work")
        log("interrupted: every child process killed")
        report["interrupted"], status = True, 130
    report["extrapolated"] = extrapolate(report["sizes"])
    report["extrapolated_fit"] = extrapolate_fit(report["sizes"])
    write_report(report, out)
    table = format_table(report)
    print(table)
    log(f"wrote {out}")
    return status or (1 if failures(report) else 0)


if __name__ == "__main__":
    sys.exit(main())
