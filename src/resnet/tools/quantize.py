"""``resnet export --int8``: an int8 ONNX model beside the float one, and what it costs in accuracy.

The float ONNX file is written and checked as ``resnet export`` always does; the int8 model
is then made from it by onnxruntime's own static quantization (QDQ format, per-channel int8
weights, uint8 activations whose ranges come from a few hundred training images), and lands
beside it as ``<name>.int8.onnx``. Both files take the same input, so the float file's
metadata travels on, with a ``quantization`` entry added.

Calibration and scoring use the run's evaluation preprocessing (the decoded-image cache at
the checkpoint's input size, then its mean and std: what ``resnet eval`` and ``resnet
predict`` feed the model). Both models are then scored on the run's evaluation images, and
timed in onnxruntime on this CPU at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from resnet.errors import ResnetError
from resnet.words import plural
from resnet.config import TrainConfig
from resnet.data.augment import Normalize
from resnet.data.cache import decode, readable_parts
from resnet.data.sources import ImageArrays, ImageFiles
from resnet.engine.checkpoint import is_number
from resnet.engine.scoring import decoded_eval_batches
from resnet.tools.bench import cpu_model
from resnet.tools.evaluation import eval_source, load_model_from_checkpoint
from resnet.tools.export import export_checkpoint, require_onnx
from resnet.util.hardware import available_cpus

if TYPE_CHECKING:
    from resnet.data.cache import DecodedImages
    from resnet.data.sources import Source

DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_MIN_AGREEMENT = 0.98
CALIBRATION_BATCH = 16
SCORE_BATCH = 32
LATENCY_REPEATS = {1: 20, 32: 5}  # batch size: timed runs, after one untimed run
# The options that mean nothing without --int8 (argparse destination: flag).
INT8_OPTIONS = {"calibration_images": "--calibration-images", "max_eval_images": "--max-eval-images",
                "min_agreement": "--min-agreement", "data_dir": "--data-dir"}


def int8_path(float_path: Path) -> Path:
    """Where the int8 model goes: beside the float file, ``model.onnx`` -> ``model.int8.onnx``."""
    return float_path.with_name(float_path.stem + ".int8" + (float_path.suffix or ".onnx"))


def spread_across_classes(labels: Sequence[int], count: int, seed: int) -> list[int]:
    """Up to ``count`` indices into ``labels`` (sorted), drawn in a seeded order that takes the
    classes in turn: one image of every class, then a second of every class, and so on. A few
    hundred images of a hundred classes then hold two or three of each, where a plain random
    draw would miss some classes and double others; a class that runs out drops out."""
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    turn = torch.empty_like(order)  # the position of each image among its class, in the shuffled order
    for label in shuffled.unique():
        members = (shuffled == label).nonzero().flatten()
        turn[members] = torch.arange(len(members))
    chosen = order[torch.argsort(turn, stable=True)[:count]]
    return sorted(chosen.tolist())


def take(source: Source, indices: list[int]) -> Source:
    if isinstance(source, ImageFiles):
        return source.subset(indices)
    return ImageArrays(source.images[indices], np.asarray(source.labels)[indices])


def decoded(source: Source, checkpoint: dict[str, Any], strict: bool) -> DecodedImages:
    """``source`` decoded at the checkpoint's input size, as ``resnet eval`` decodes it, less the
    files that cannot be read (warned of; with ``strict``, an error)."""

    [(_, data)], _ = readable_parts([(source, decode(source, checkpoint["normalization"]["image_size"]))], strict)
    return data


def input_batches(data: DecodedImages, checkpoint: dict[str, Any], batch_size: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(normalized float32 NCHW images, labels), ``batch_size`` at a time, in order."""

    norm = checkpoint["normalization"]
    normalize = Normalize(tuple(norm["mean"]), tuple(norm["std"]))
    for images, labels in decoded_eval_batches(data, batch_size, torch.device("cpu"), normalize=normalize):
        # Normalize gives channels_last; onnxruntime reads the array's memory as NCHW.
        yield np.ascontiguousarray(images.numpy()), labels.numpy()


class CalibrationImages:
    """What ``quantize_static`` reads (an ``onnxruntime.quantization.CalibrationDataReader``,
    which it recognises by ``get_next``): the graph's input, a batch at a time, then None."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str) -> None:
        self._batches = iter(batches)
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_onnx(float_path: Path, out: Path, calibration: Iterable[np.ndarray], description: str) -> None:
    """The int8 QDQ model of ``float_path`` at ``out``, its activation ranges the MinMax of the
    ``calibration`` batches; the float file's metadata, plus ``quantization``: ``description``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="resnet-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # onnxruntime's pre-processing folds each BatchNorm into its convolution: one weight
        # per convolution is quantized, per output channel, instead of a convolution and a
        # BatchNorm each, and the ReLUs merge into the quantization of the convolutions' outputs.
        quant_pre_process(str(float_path), str(prepared))
        # uint8 activations with int8 weights: on x86 without VNNI (AVX2 only) onnxruntime's u8s8
        # kernels ran faster than float32 and than int8 activations (docs/recipes.md, "Measurements
        # behind the defaults").
        quantize_static(str(prepared), str(out), CalibrationImages(calibration, "input"),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    proto = onnx.load(str(out))
    share_identical_initializers(proto.graph)
    metadata = {entry.key: entry.value for entry in onnx.load(str(float_path), load_external_data=False).metadata_props}
    onnx.helper.set_model_props(proto, {**metadata, "quantization": json.dumps(description)})
    onnx.save(proto, str(out))


def share_identical_initializers(graph: Any) -> None:
    """One copy of each constant. With flip TTA the graph runs the network twice; the float
    export shares its weights, but folding BatchNorm gives each convolution a weight of its
    own, which would double the int8 file."""
    from onnx import numpy_helper

    inputs = {value.name for value in graph.input}  # an initializer that is also an input can be fed
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    kept = []
    for tensor in graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in first and tensor.name not in inputs:
            alias[tensor.name] = first[key]
        else:
            first[key] = tensor.name
            kept.append(tensor)
    if not alias:
        return
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def top1(model: Any, images: np.ndarray) -> np.ndarray:
    return model.run(None, {model.get_inputs()[0].name: images})[0].argmax(1)


def agreement_counts(float_model: Any, int8_model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]
                     ) -> dict[str, int]:
    """How many images each model gets right, and on how many their top-1 classes agree."""
    counts = {"images": 0, "float_correct": 0, "int8_correct": 0, "agreeing": 0}
    for images, labels in batches:
        float_top, int8_top = top1(float_model, images), top1(int8_model, images)
        counts["images"] += len(labels)
        counts["float_correct"] += int((float_top == labels).sum())
        counts["int8_correct"] += int((int8_top == labels).sum())
        counts["agreeing"] += int((float_top == int8_top).sum())
    return counts


def median_latency(model: Any, batch: int, size: int, repeats: int) -> float:
    """Median seconds of one ``run`` at ``batch`` images (the content does not change the work)."""
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    feed = {model.get_inputs()[0].name: images}
    model.run(None, feed)  # the first run allocates its buffers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantization_text(images: int, seed: int) -> str:
    import onnxruntime

    return (f"int8 static QDQ (uint8 activations, per-channel int8 weights), {plural(images, 'calibration image')} "
            f"(training split, spread across classes, seed {seed}; MinMax ranges), "
            f"onnxruntime {onnxruntime.__version__}")


def data_sources(checkpoint: dict[str, Any], data_dir: str | None) -> tuple[Source, Source, dict[str, Any]]:
    """The run's training images (to calibrate on) and evaluation images (to score), with where
    the latter come from; a data folder that is gone is a one-line error, before anything is written."""

    train, _, _, _ = eval_source(checkpoint, data_dir=data_dir, subset="train")
    evaluation, _, _, where = eval_source(checkpoint, data_dir=data_dir)
    return train, evaluation, where


def check_options(calibration_images: int, max_eval_images: int | None, min_agreement: float) -> None:
    """The int8 options, before any work: a share above 1 could never be reached (the export
    would run to its end, then fail), and one below 0 would pass whatever the int8 model did."""

    if not (is_number(min_agreement) and 0 <= min_agreement <= 1):
        shown = f"{min_agreement:g}" if is_number(min_agreement) else repr(min_agreement)
        raise ResnetError(f"--min-agreement must be a fraction in [0, 1], got {shown}")
    if calibration_images < 1:
        raise ResnetError(f"--calibration-images must be at least 1, got {calibration_images}")
    if max_eval_images is not None and max_eval_images < 1:
        raise ResnetError(f"--max-eval-images must be at least 1, got {max_eval_images}")


def export_int8(path: str | Path, out: str | Path | None = None, tolerance: float = 1e-3,
                calibration_images: int = DEFAULT_CALIBRATION_IMAGES, max_eval_images: int | None = None,
                min_agreement: float = DEFAULT_MIN_AGREEMENT, data_dir: str | None = None) -> dict[str, Any]:
    """Export the float ONNX model (``export_checkpoint``), quantize it beside it, score both on
    the run's evaluation images (a class-spread sample of ``max_eval_images`` when given) and
    time both. ``passed`` says whether their top-1 agreement reached ``min_agreement``."""

    check_options(calibration_images, max_eval_images, min_agreement)
    require_onnx()
    _, checkpoint = load_model_from_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint.get("config") or {})
    train, evaluation, where = data_sources(checkpoint, data_dir)
    exported = export_checkpoint(path, "onnx", out, tolerance)
    float_path = Path(exported["out"])
    int8 = int8_path(float_path)

    calibration = decoded(take(train, spread_across_classes(train.labels, calibration_images, config.seed)),
                          checkpoint, config.strict)
    description = quantization_text(len(calibration), config.seed)
    quantize_onnx(float_path, int8, (x for x, _ in input_batches(calibration, checkpoint, CALIBRATION_BATCH)),
                  description)

    if max_eval_images is not None and max_eval_images < len(evaluation):
        evaluation = take(evaluation, spread_across_classes(evaluation.labels, max_eval_images, config.seed))
    scored = decoded(evaluation, checkpoint, config.strict)
    if not len(scored):
        raise ResnetError(f"there are no images to evaluate; the int8 model is kept at {int8}")
    threads = available_cpus()
    models = {"float32": session(float_path, threads), "int8": session(int8, threads)}
    counts = agreement_counts(models["float32"], models["int8"], input_batches(scored, checkpoint, SCORE_BATCH))
    size = checkpoint["normalization"]["image_size"]
    latency = {name: {batch: median_latency(model, batch, size, repeats) for batch, repeats in LATENCY_REPEATS.items()}
               for name, model in models.items()}
    agreement = counts["agreeing"] / counts["images"]
    return {**exported, "int8_out": str(int8), "int8_bytes": int8.stat().st_size, "quantization": description,
            "calibration_images": len(calibration), **where, **counts,
            "float_top1": counts["float_correct"] / counts["images"],
            "int8_top1": counts["int8_correct"] / counts["images"], "agreement": agreement,
            "min_agreement": min_agreement, "passed": bool(agreement >= min_agreement),
            "latency_s": latency, "threads": threads, "cpu": cpu_model(), "latency_repeats": dict(LATENCY_REPEATS)}


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    """``resnet export``'s int8 options; None where not given, so that one given without
    ``--int8`` can be told apart from a default."""
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 model (onnxruntime static quantization, QDQ, per-channel weights) "
                        "beside the float one as <name>.int8.onnx; score both on the run's evaluation images and "
                        "time both; exit 1 when their top-1 classes agree less often than --min-agreement")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help=f"training images that set the int8 activation ranges, spread across classes "
                        f"(default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--max-eval-images", type=int, default=None, metavar="N",
                   help="score on at most N evaluation images, spread across classes (default: all)")
    p.add_argument("--min-agreement", type=float, default=None, metavar="FRACTION",
                   help=f"least share of evaluation images on which int8 and float agree, from 0 to 1 (default "
                        f"{DEFAULT_MIN_AGREEMENT})")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the run's data folder, when it has moved since training (default: the run's own)")


def format_int8(result: dict[str, Any]) -> str:
    latency, size = result["latency_s"], result["image_size"]
    lines = [
        f"wrote {result['out']} (float32, {result['bytes'] / 1e6:.1f} MB) and {result['int8_out']} "
        f"(int8, {result['int8_bytes'] / 1e6:.1f} MB): {result['arch']}, {plural(result['classes'], 'class')}, "
        f"input (N, 3, {size}, {size})",
        f"max |onnx - pytorch| = {result['max_abs_diff']:.3g} on a random batch of {result['check_batch']}",
        f"quantization: {result['quantization']}",
        f"{result['dataset']} {result['subset']}: {plural(result['images'], 'image')}",
        f"  top-1  float32 {100 * result['float_top1']:.2f}%  int8 {100 * result['int8_top1']:.2f}%  "
        f"agreement {100 * result['agreement']:.2f}% (the same top-1 class on {result['agreeing']} of "
        f"{plural(result['images'], 'image')})",
        f"latency in onnxruntime, median of {' / '.join(str(n) for n in result['latency_repeats'].values())} runs, "
        f"{plural(result['threads'], 'thread')} on {result['cpu']}:",
    ]
    for batch in result["latency_repeats"]:
        float_s, int8_s = latency["float32"][batch], latency["int8"][batch]
        lines.append(f"  batch {batch:>2}: float32 {1e3 * float_s:.2f} ms  int8 {1e3 * int8_s:.2f} ms  "
                     f"(int8 {float_s / int8_s:.2f}x as fast)")
    return "\n".join(lines)


def run_int8_export(args: argparse.Namespace) -> int:
    """``resnet export --int8``: 0 when the int8 model agrees with the float one often enough,
    else 1, with one line on stderr naming the int8 file, which is kept."""
    given = [flag for name, flag in INT8_OPTIONS.items() if getattr(args, name) is not None]
    if not args.int8:
        raise ResnetError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} with --int8")
    if args.format != "onnx":
        raise ResnetError(f"--int8 quantizes an ONNX model; it cannot be combined with --format {args.format}")
    min_agreement = DEFAULT_MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
    calibration_images = DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    result = export_int8(args.checkpoint, args.out, args.tolerance, calibration_images=calibration_images,
                         max_eval_images=args.max_eval_images, min_agreement=min_agreement, data_dir=args.data_dir)
    print(format_int8(result))
    if not result["passed"]:
        print(f"resnet export: error: the int8 model agrees with the float one on {100 * result['agreement']:.2f}% "
              f"of top-1 classes, below --min-agreement {100 * min_agreement:.2f}%; "
              f"it is kept at {result['int8_out']}", file=sys.stderr)
        return 1
    return 0
