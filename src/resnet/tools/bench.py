"""``resnet bench``: where training time goes, the tutorial's pipeline against ours.

Three measurements, all in images per second:

1. **End to end**: real training steps fed by the tutorial's pipeline (per-image PIL
   transforms in DataLoader workers, an fp32 NCHW model, SGD) and by ours (the decoded
   uint8 cache, one batched warp on the device, channels_last, autocast, SGD), on the
   same JPEGs, in alternating rounds within one run; the median round of each, and their
   ratio. Our one-off decode is timed apart and left out.
2. **Model only**: forward, backward and optimizer step on a batch already on the device,
   per precision and memory format: what the hardware allows at best. On CUDA also the same
   step as a CUDA graph (``--cuda-graphs``), per precision, channels_last: eager against graphs,
   and fp16 against bf16.
3. **Data only**: batches delivered to the device, no model, per pipeline.

Without ``--data-dir`` it writes its own JPEGs (procedural flowers upscaled, with noise,
at the tutorial's original ~500 px) under the cache folder, so it runs offline.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnet.data import augment, petals
from resnet.engine.assembly import build_parts, training_step
from resnet.engine.graphs import WARMUP_STEPS, GraphedStep
from resnet.config import MAX_IMAGE_SIZE, resolve_config
from resnet.data.cache import cache_dir, decode
from resnet.data.sources import ImageFiles, classic_loader, flowers102_splits, list_class_folders
from resnet.errors import ResnetError
from resnet.util.hardware import PRECISION_NAMES, cpu_supports_bf16, select_device, select_precision
from resnet.data.pipeline import FastTrainBatches, augment_spec
from resnet.engine.sampling import generator_for
from resnet.words import plural

GENERATED_VERSION = 1  # bump when the generated images change
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
BUSY_WARNING = 0.2  # share of CPU time used by other work before a run that earns a warning


@dataclass
class BenchOptions:
    arch: str = "resnet18"
    image_size: int = 112
    batch_size: int = 64
    steps: int = 10  # timed steps per round
    warmup: int = 2  # untimed steps before each timed window
    rounds: int = 3
    data_dir: str | None = None
    images: int = 512  # images used: generated, or a fixed subset of --data-dir
    generated_size: int = 500  # shorter side of generated JPEGs
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # ours
    recipe: str = "tutorial"  # ours' augmentation: tutorial (the tutorial's transforms) | default
    seed: int = 0
    compile: bool = False  # also the model-only step under torch.compile
    cuda_graphs: str = "auto"  # CUDA: ours end to end as a graph, and the model-only step as one (auto, on); off
    note: str = ""


# --- the images ----------------------------------------------------------------------


def generated_dir(count: int, size: int) -> Path:
    return cache_dir() / "bench-jpegs" / f"v{GENERATED_VERSION}-{size}px-{count}"


def generate_jpegs(count: int, size: int, workers: int = 2) -> Path:
    """``count`` JPEGs, ``size`` px on the shorter side (alternately landscape and portrait
    4:3), in one folder per petals class; made once, then reused."""
    root = generated_dir(count, size)
    if (root / "done").exists():
        return root
    long_side = round(size * 4 / 3)

    def make(index: int) -> None:
        rng = np.random.default_rng([GENERATED_VERSION, index])
        label = index % len(petals.CLASSES)
        drawing = petals.draw_flower(rng, label, 128).transpose(1, 2, 0)
        shape = (long_side, size) if index % 2 == 0 else (size, long_side)
        pixels = np.asarray(Image.fromarray(drawing).resize(shape, Image.BICUBIC), dtype=np.int16)
        # Fine noise gives the files the detail (and so the size and the decode cost) of
        # photographs, as the original Flowers-102 JPEGs (docs/recipes.md, "Measurements behind the defaults").
        pixels = pixels + rng.integers(-3, 4, pixels.shape, dtype=np.int16)
        folder = root / petals.CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:05d}.jpg", quality=85)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL and numpy release the GIL
        list(pool.map(make, range(count)))
    (root / "done").write_text(f"{count} images, {size} px\n")
    return root


def bench_source(options: BenchOptions) -> tuple[ImageFiles, int, dict[str, Any]]:
    """The JPEGs both pipelines read: (files, number of classes, description)."""
    if options.data_dir is None:
        root = generate_jpegs(options.images, options.generated_size, options.workers)
        classes, samples = list_class_folders(root)
        files = ImageFiles([p for p, _ in samples], [label for _, label in samples])
        return files, len(classes), {"kind": "generated", "path": str(root), "images": len(files),
                                     "shorter_side": options.generated_size}
    root = Path(options.data_dir)
    if (root / "flowers-102").is_dir() or root.name == "flowers-102":
        # The tutorial's training images: torchvision's Flowers102(split="test").
        files = flowers102_splits(str(root.parent if root.name == "flowers-102" else root), "tutorial").train
        kind, num_classes = "flowers102", 102
    else:
        classes, samples = list_class_folders(root / "train" if (root / "train").is_dir() else root)
        files = ImageFiles([p for p, _ in samples], [label for _, label in samples])
        kind, num_classes = "imagefolder", len(classes)
    total = len(files)
    if options.images and total > options.images:
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(options.seed))[:options.images]
        files = files.subset(sorted(keep.tolist()))
    with Image.open(files.paths[0]) as first:
        example = first.size
    return files, num_classes, {"kind": kind, "path": str(root), "images": len(files), "of": total,
                                "first_image_size": list(example)}


# --- timing -----------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(step: Callable[[int], int], warmup: int, steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` calls of ``step(i) -> images``, after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    start = time.perf_counter()
    images = sum(step(warmup + i) for i in range(steps))
    synchronize(device)
    return images / (time.perf_counter() - start)


def round_batches(n: int, batch_size: int, count: int, seed: int, round_index: int) -> list[torch.Tensor]:
    """``count`` full batches of indices from successive random permutations of ``n``."""
    generator = generator_for(seed, round_index, -2)
    needed = count * batch_size
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(needed / n))])
    return list(order[:needed].split(batch_size))


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the pipelines -------------------------------------------------------------------------


class Trainer:
    """The tutorial's recipe (SGD, its lr and momentum) for ``arch``, assembled as a run assembles
    its model and step, one training step at a time. ``fused``: training's fused SGD update where
    the device has one (the tutorial's is the default per-tensor loop)."""

    def __init__(self, arch: str, num_classes: int, device: torch.device, dtype: torch.dtype | None,
                 memory_format: torch.memory_format, seed: int, compile: bool = False, fused: bool = True,
                 cuda_graphs: str = "off") -> None:
        config = resolve_config({"recipe": "tutorial", "arch": arch, "seed": seed, "compile": compile,
                                 "channels_last": memory_format == torch.channels_last, "cuda_graphs": cuda_graphs})
        parts = build_parts(config, num_classes, device, dtype, fused=fused)
        parts.model.train()
        self.train_step = training_step(config, parts, device, dtype)
        self.graphed = isinstance(self.train_step, GraphedStep)

    def prime(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """A graphed step's warm-up and capture, before any timing (an eager step needs none)."""
        if self.graphed:
            for _ in range(WARMUP_STEPS + 1):
                self.step(images, labels)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> int:
        self.train_step(images, labels)
        return len(labels)


class Pipelines:
    """The same JPEGs as the tutorial's DataLoader and as our decoded, batch-augmented cache."""

    def __init__(self, options: BenchOptions, files: ImageFiles, device: torch.device) -> None:
        self.options, self.files, self.device = options, files, device
        tutorial = resolve_config({"dataset": "imagefolder", "recipe": "tutorial",
                                   "image_size": options.image_size})
        self.tutorial_transform = augment.classic_train_transform(augment_spec(tutorial), options.image_size)
        self.config = resolve_config({
            "dataset": "imagefolder", "recipe": options.recipe, "arch": options.arch, "image_size": options.image_size,
            "batch_size": options.batch_size, "device": options.device, "precision": options.precision,
            "workers": options.workers, "seed": options.seed})
        start = time.perf_counter()
        decoded = decode(files, self.config.resolved_cache_size(), workers=options.workers, use_disk_cache=False,
                         draft=True)
        self.decode_seconds = time.perf_counter() - start
        self.fast = FastTrainBatches(decoded, self.config, device)

    def batches(self, round_index: int) -> list[torch.Tensor]:
        o = self.options
        return round_batches(len(self.files), o.batch_size, o.warmup + o.steps, o.seed, round_index)

    def tutorial_batches(self, round_index: int):
        """A fresh DataLoader per round (its workers start during the warmup steps)."""
        loader = classic_loader(self.files, self.batches(round_index), self.tutorial_transform,
                                self.options.workers, self.options.seed + round_index)
        return iter(loader)

    def run_tutorial(self, round_index: int, consume: Callable[[torch.Tensor, torch.Tensor], int]) -> float:
        # The iterator, and with it its workers, ends when this returns: before the other pipeline runs.
        iterator = self.tutorial_batches(round_index)
        return timed(lambda i: consume(*next(iterator)), self.options.warmup, self.options.steps, self.device)

    def run_ours(self, round_index: int, consume: Callable[[torch.Tensor, torch.Tensor], int]) -> float:
        batches = self.batches(round_index)

        def step(i: int) -> int:
            return consume(*self.fast(batches[i], generator_for(self.options.seed, round_index, i),
                                     self.config.image_size))

        return timed(step, self.options.warmup, self.options.steps, self.device)


def deliver(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], int]:
    def consume(images: torch.Tensor, labels: torch.Tensor) -> int:
        images.to(device, non_blocking=True)
        labels.to(device, non_blocking=True)
        return len(labels)

    return consume


def supported_precisions(device: torch.device) -> list[torch.dtype | None]:
    precisions: list[torch.dtype | None] = [None]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            precisions.append(torch.bfloat16)
        precisions.append(torch.float16)
    elif device.type == "cpu" and cpu_supports_bf16():
        precisions.append(torch.bfloat16)
    return precisions


# --- the benchmark ---------------------------------------------------------------------------


def model_step_speeds(options: BenchOptions, num_classes: int, device: torch.device, dtype: torch.dtype | None,
                      memory_format: torch.memory_format, cuda_graphs: str = "off") -> list[float]:
    """Images/s of training steps on one fixed batch already on the device, one figure per round
    (``cuda_graphs="on"``: the step as a CUDA graph, captured before the timing)."""
    trainer = Trainer(options.arch, num_classes, device, dtype, memory_format, options.seed, cuda_graphs=cuda_graphs)
    images, labels = fixed_batch(options, num_classes, device, memory_format)
    trainer.prime(images, labels)
    return [timed(lambda i: trainer.step(images, labels), options.warmup if r == 0 else 1, options.steps, device)
            for r in range(options.rounds)]


def fixed_batch(options: BenchOptions, num_classes: int, device: torch.device,
                memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(options.seed)
    images = torch.randn(options.batch_size, 3, options.image_size, options.image_size, generator=generator)
    labels = torch.randint(0, num_classes, (options.batch_size,), generator=generator)
    return images.to(device).contiguous(memory_format=memory_format), labels.to(device)


def compiled_step_speeds(options: BenchOptions, num_classes: int, device: torch.device,
                         dtype: torch.dtype | None) -> dict[str, Any]:
    """The model-only step under torch.compile (channels_last, our precision): the seconds of
    the first ``--warmup`` steps, which compile, then images/s per round as for eager."""
    trainer = Trainer(options.arch, num_classes, device, dtype, torch.channels_last, options.seed, compile=True)
    images, labels = fixed_batch(options, num_classes, device, torch.channels_last)
    start = time.perf_counter()
    for _ in range(options.warmup):
        trainer.step(images, labels)
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    rounds = [timed(lambda i: trainer.step(images, labels), 1, options.steps, device) for _ in range(options.rounds)]
    return {"precision": PRECISION_NAMES[dtype], "memory_format": "channels_last",
            "compile_seconds": compile_seconds, "images_per_s": median(rounds), "rounds": rounds}


def log(message: str) -> None:
    print(f"resnet bench: {message}", file=sys.stderr, flush=True)


def benchmark(options: BenchOptions) -> dict[str, Any]:
    """The three measurements on one machine, in one run; a JSON-ready dict."""
    validate(options)
    device = select_device(options.device)
    if options.cuda_graphs == "on" and device.type != "cuda":
        raise ResnetError(f"--cuda-graphs on: CUDA graphs need a CUDA GPU, and this bench runs on {device.type}")
    ours_dtype = select_precision(options.precision, device)
    machine = machine_info(device)
    files, num_classes, source = bench_source(options)
    log(f"{options.arch} at {options.image_size} px, batch {options.batch_size}, on {device.type}; "
        f"{plural(source['images'], source['kind'] + ' image')}")
    busy = machine["cpu_busy_before"]
    if busy is not None and busy > BUSY_WARNING:
        log(f"warning: the CPUs were {100 * busy:.0f}% busy before the run; other work skews these figures")
    pipelines = Pipelines(options, files, device)
    decode_info = {"seconds": pipelines.decode_seconds, "images": len(files),
                   "images_per_s": len(files) / pipelines.decode_seconds,
                   "cache_size": pipelines.config.resolved_cache_size()}
    log(f"decoded {plural(len(files), 'image')} to {decode_info['cache_size']} px in {pipelines.decode_seconds:.1f} s "
        "(one-off, excluded from ours)")
    e2e = end_to_end_rounds(options, pipelines, num_classes, ours_dtype)
    model_rounds = model_only_rounds(options, num_classes, device, ours_dtype)
    graph_rounds = model_only_graph_rounds(options, num_classes, device, ours_dtype)
    data = data_only_rounds(options, pipelines)
    compiled = {}
    if options.compile:
        compiled = {"model_only_compiled": compiled_step_speeds(options, num_classes, device, ours_dtype)}
        log(f"model only, compiled: {compiled['model_only_compiled']['compile_seconds']:.1f} s to compile, "
            f"{compiled['model_only_compiled']['images_per_s']:.1f} images/s")
    return {
        **compiled,
        "end_to_end": end_to_end_summary(options, pipelines, e2e, model_rounds, graph_rounds, ours_dtype,
                                         decode_info),
        "model_only": {name: {fmt: median(speeds) for fmt, speeds in formats.items()}
                       for name, formats in model_rounds.items()},
        "model_only_graphs": {name: median(speeds) for name, speeds in graph_rounds.items()},
        "model_only_graphs_rounds": graph_rounds,
        "data_only": {"tutorial": median(data["tutorial"]), "ours": median(data["ours"]),
                      "ratio": median(data["ours"]) / median(data["tutorial"]), "rounds": data},
        "model_only_rounds": model_rounds,
        "config": {**asdict(options), "device_resolved": str(device), "num_classes": num_classes, "source": source},
        "machine": machine,
    }


def end_to_end_rounds(options: BenchOptions, pipelines: Pipelines, num_classes: int,
                      ours_dtype: torch.dtype | None) -> dict[str, list[float]]:
    """1. Real training steps fed by each pipeline, in rounds alternating between the two."""
    device = pipelines.device
    tutorial = Trainer(options.arch, num_classes, device, None, torch.contiguous_format, options.seed, fused=False)
    ours = Trainer(options.arch, num_classes, device, ours_dtype, torch.channels_last, options.seed,
                   cuda_graphs=options.cuda_graphs)
    ours.prime(*fixed_batch(options, num_classes, device, torch.channels_last))  # a graph: captured before timing
    e2e: dict[str, list[float]] = {"tutorial": [], "ours": []}
    for r in range(options.rounds):
        e2e["tutorial"].append(pipelines.run_tutorial(r, tutorial.step))
        e2e["ours"].append(pipelines.run_ours(r, ours.step))
        log(f"end to end, round {r + 1}/{options.rounds}: tutorial {e2e['tutorial'][-1]:.1f}, "
            f"ours {e2e['ours'][-1]:.1f} images/s")
    return e2e


def model_only_rounds(options: BenchOptions, num_classes: int, device: torch.device,
                      ours_dtype: torch.dtype | None) -> dict[str, dict[str, list[float]]]:
    """2. The model step alone, on a batch already on the device, per precision and memory format."""
    rounds: dict[str, dict[str, list[float]]] = {}
    precisions = supported_precisions(device)
    if ours_dtype not in precisions:  # e.g. --precision fp16 on a CPU: measure it anyway
        precisions.append(ours_dtype)
    for dtype in precisions:
        for format_name, memory_format in FORMATS.items():
            speeds = model_step_speeds(options, num_classes, device, dtype, memory_format)
            rounds.setdefault(PRECISION_NAMES[dtype], {})[format_name] = speeds
            log(f"model only, {PRECISION_NAMES[dtype]} {format_name}: {median(speeds):.1f} images/s")
    return rounds


def model_only_graph_rounds(options: BenchOptions, num_classes: int, device: torch.device,
                            ours_dtype: torch.dtype | None) -> dict[str, list[float]]:
    """2b. On CUDA, the model step as a CUDA graph per precision (channels_last): against the eager
    figures of 2, what the launches cost; and fp16 against bf16 both ways."""
    if device.type != "cuda" or options.cuda_graphs == "off":
        return {}
    rounds: dict[str, list[float]] = {}
    precisions = supported_precisions(device)
    if ours_dtype not in precisions:
        precisions.append(ours_dtype)
    for dtype in precisions:
        speeds = model_step_speeds(options, num_classes, device, dtype, torch.channels_last, cuda_graphs="on")
        rounds[PRECISION_NAMES[dtype]] = speeds
        log(f"model only, {PRECISION_NAMES[dtype]} channels_last as a CUDA graph: {median(speeds):.1f} images/s")
    return rounds


def data_only_rounds(options: BenchOptions, pipelines: Pipelines) -> dict[str, list[float]]:
    """3. Each data pipeline alone, delivering batches to the device, in alternating rounds."""
    data: dict[str, list[float]] = {"tutorial": [], "ours": []}
    consume = deliver(pipelines.device)
    for r in range(options.rounds):
        data["tutorial"].append(pipelines.run_tutorial(options.rounds + r, consume))
        data["ours"].append(pipelines.run_ours(options.rounds + r, consume))
        log(f"data only, round {r + 1}/{options.rounds}: tutorial {data['tutorial'][-1]:.1f}, "
            f"ours {data['ours'][-1]:.1f} images/s")
    return data


def end_to_end_summary(options: BenchOptions, pipelines: Pipelines, e2e: dict[str, list[float]],
                       model_rounds: dict[str, dict[str, list[float]]], graph_rounds: dict[str, list[float]],
                       ours_dtype: torch.dtype | None, decode_info: dict[str, Any]) -> dict[str, Any]:
    """Medians, their ratio, each pipeline's share of its own model-only speed (ours': the graph's
    when its steps were one), and the setups."""
    tutorial_speed, ours_speed = median(e2e["tutorial"]), median(e2e["ours"])
    ours_precision = PRECISION_NAMES[ours_dtype]
    ours_graphed = ours_precision in graph_rounds and pipelines.device.type == "cuda"
    ours_limit = (median(graph_rounds[ours_precision]) if ours_graphed
                  else median(model_rounds[ours_precision]["channels_last"]))
    return {
        "tutorial": tutorial_speed,
        "ours": ours_speed,
        "ratio": ours_speed / tutorial_speed,
        "tutorial_setup": {"precision": "fp32", "memory_format": "nchw", "workers": options.workers,
                           "transforms": "RandomRotation(30), RandomResizedCrop, both flips, ToTensor, Normalize"},
        "ours_setup": {"precision": ours_precision, "memory_format": "channels_last", "cuda_graphs": ours_graphed,
                       "augment": asdict(augment_spec(pipelines.config))},
        "tutorial_of_model_only": tutorial_speed / median(model_rounds["fp32"]["nchw"]),
        "ours_of_model_only": ours_speed / ours_limit,
        "decode": decode_info,
        "rounds": e2e,
    }


def validate(options: BenchOptions) -> None:
    if options.image_size < 32:
        raise ResnetError(f"--image-size must be at least 32 (a ResNet downsamples by 32), got {options.image_size}")
    if options.image_size > MAX_IMAGE_SIZE:
        raise ResnetError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got {options.image_size}")
    if options.generated_size > MAX_IMAGE_SIZE:
        raise ResnetError(f"--generated-size must be at most {MAX_IMAGE_SIZE}, got {options.generated_size}")
    if options.recipe not in ("tutorial", "default"):
        raise ResnetError(f"--recipe must be tutorial or default, got {options.recipe!r}")
    if options.batch_size < 2:
        raise ResnetError(f"--batch-size must be at least 2 (BatchNorm), got {options.batch_size}")
    if options.generated_size < 8:
        raise ResnetError(f"--generated-size must be at least 8, got {options.generated_size}")
    for name in ("steps", "rounds", "images"):
        if getattr(options, name) < 1:
            raise ResnetError(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.warmup < 1:
        raise ResnetError(f"--warmup must be at least 1, got {options.warmup}")


# --- the machine and the report -----------------------------------------------------------------


def cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy_fraction(seconds: float = 0.5) -> float | None:
    """The share of all CPUs' time spent busy over ``seconds`` (Linux): what else is running."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def machine_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0],
        "cpu_busy_before": cpu_busy_fraction(),  # other work on the machine just before the run
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def format_report(result: dict[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    e2e, data = result["end_to_end"], result["data_only"]
    source = config["source"]
    hardware = machine.get("gpu", machine["cpu"])
    lines = [
        (f"{config['arch']} at {config['image_size']} px, batch {config['batch_size']}, on {machine['device']} "
         f"({hardware}; {plural(machine['cpus'], 'cpu')}, torch {machine['torch']}); "
         f"{plural(source['images'], source['kind'] + ' image')}; median of {plural(config['rounds'], 'round')} of "
         f"{plural(config['steps'], 'step')}"),
        "",
        "end-to-end training (images/s)",
        f"  {'pipeline':<10}{'precision':<11}{'format':<15}{'images/s':>10}{'of model-only':>15}   rounds",
    ]
    for name, setup_key, share in (("tutorial", "tutorial_setup", "tutorial_of_model_only"),
                                   ("ours", "ours_setup", "ours_of_model_only")):
        setup = e2e[setup_key]
        rounds = " ".join(f"{v:.1f}" for v in e2e["rounds"][name])
        lines.append(f"  {name:<10}{setup['precision']:<11}{setup['memory_format']:<15}{e2e[name]:>10.1f}"
                     f"{100 * e2e[share]:>14.0f}%   {rounds}")
    decode_info = e2e["decode"]
    lines += [
        f"  ours / tutorial: {e2e['ratio']:.2f}x",
        (f"  one-off decode (excluded from ours): {plural(decode_info['images'], 'image')} to "
         f"{decode_info['cache_size']} px in {decode_info['seconds']:.1f} s "
         f"({decode_info['images_per_s']:.0f} images/s)"),
        "",
        "model only: forward + backward + SGD step on a batch on the device (images/s)",
        f"  {'precision':<11}{'nchw':>10}{'channels_last':>15}",
    ]
    for precision, speeds in result["model_only"].items():
        lines.append(f"  {precision:<11}{speeds['nchw']:>10.1f}{speeds['channels_last']:>15.1f}")
    lines += graph_lines(result)
    if "model_only_compiled" in result:
        compiled = result["model_only_compiled"]
        eager = result["model_only"][compiled["precision"]]["channels_last"]
        lines.append(f"  compiled ({compiled['precision']}, channels_last): {compiled['images_per_s']:.1f} images/s "
                     f"against {eager:.1f} eager ({compiled['images_per_s'] / eager:.2f}x), after "
                     f"{compiled['compile_seconds']:.1f} s of compiling steps")
    lines += [
        "",
        "data pipeline only: batches delivered to the device, no model (images/s)",
        f"  {'tutorial':<11}{data['tutorial']:>10.1f}",
        f"  {'ours':<11}{data['ours']:>10.1f}",
        f"  ours / tutorial: {data['ratio']:.2f}x",
    ]
    return "\n".join(lines)


def graph_lines(result: dict[str, Any]) -> list[str]:
    """The model-only step as a CUDA graph against eager (channels_last), and fp16 against bf16."""
    eager, graphs = result["model_only"], result.get("model_only_graphs") or {}
    lines = [f"  {precision} as a CUDA graph: {speed:.1f} images/s against {eager[precision]['channels_last']:.1f} "
             f"eager ({speed / eager[precision]['channels_last']:.2f}x)" for precision, speed in graphs.items()]
    if "fp16" in eager and "bf16" in eager:
        ratio = eager["fp16"]["channels_last"] / eager["bf16"]["channels_last"]
        line = f"  fp16 / bf16 (channels_last): {ratio:.2f}x eager"
        if "fp16" in graphs and "bf16" in graphs:
            line += f", {graphs['fp16'] / graphs['bf16']:.2f}x as CUDA graphs"
        lines.append(line)
    return lines


def markdown_report(results: list[dict[str, Any]], command: str = "") -> str:
    """A markdown summary of several runs (e.g. benchmarks/results/bench-cpu.md)."""
    if not results:
        return ""
    machine = results[0]["machine"]
    lines = [
        ("| arch | px | batch | tutorial img/s | ours img/s | ours / tutorial | ours precision | "
         "model-only (same precision, channels_last) | ours of model-only | data-only tutorial | "
         "data-only ours | decode (one-off) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        c, e2e, data = result["config"], result["end_to_end"], result["data_only"]
        precision = e2e["ours_setup"]["precision"]
        limit = result["model_only"][precision]["channels_last"]
        lines.append(
            f"| {c['arch']} | {c['image_size']} | {c['batch_size']} | {e2e['tutorial']:.1f} | {e2e['ours']:.1f} | "
            f"{e2e['ratio']:.2f}x | {precision} | {limit:.1f} | {100 * e2e['ours_of_model_only']:.0f}% | "
            f"{data['tutorial']:.1f} | {data['ours']:.1f} | {e2e['decode']['seconds']:.1f} s "
            f"({plural(e2e['decode']['images'], 'image')}) |")
    lines += ["", "Model only (images/s, forward + backward + SGD step):", "",
              "| arch | px | batch | precision | nchw | channels_last |", "|---|---|---|---|---|---|"]
    for result in results:
        c = result["config"]
        for precision, speeds in result["model_only"].items():
            lines.append(f"| {c['arch']} | {c['image_size']} | {c['batch_size']} | {precision} | "
                         f"{speeds['nchw']:.1f} | {speeds['channels_last']:.1f} |")
        for precision, speed in (result.get("model_only_graphs") or {}).items():
            lines.append(f"| {c['arch']} | {c['image_size']} | {c['batch_size']} | {precision}, CUDA graph | - | "
                         f"{speed:.1f} |")
    config = results[0]["config"]
    source = config["source"]
    notes = sorted({r["config"]["note"] for r in results if r["config"].get("note")})
    loads = ", ".join(f"{r['machine']['load_average'][0]:.1f}" for r in results)
    busy = ", ".join("?" if r["machine"].get("cpu_busy_before") is None
                     else f"{100 * r['machine']['cpu_busy_before']:.0f}%" for r in results)
    lines += [
        "",
        (f"Machine: {machine['cpu']}, {plural(machine['cpus'], 'cpu')} "
         f"({plural(machine['torch_threads'], 'torch thread')}), "
         f"cpu bf16: {machine['cpu_bf16']}, {machine.get('gpu', 'no GPU')}; torch {machine['torch']}, "
         f"torchvision {machine['torchvision']}, Python {machine['python']}, {machine['platform']}. "
         f"At the start of each run: CPUs busy with other work {busy}, load average {loads}."),
        "",
        f"Data: {plural(source['images'], source['kind'] + ' JPEG')}"
        + (f", {source['shorter_side']} px on the shorter side" if "shorter_side" in source else "")
        + f"; median of {plural(config['rounds'], 'alternating round')} of {plural(config['steps'], 'timed step')} "
          f"after {plural(config['warmup'], 'warmup step')}; {plural(config['workers'], 'DataLoader worker')}.",
    ]
    if notes:
        lines += ["", "Note: " + "; ".join(notes)]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def run(options: BenchOptions, as_json: bool = False, out: str | None = None) -> dict[str, Any]:
    result = benchmark(options)
    text = json.dumps(result, indent=2)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text if as_json else format_report(result))
    return result
