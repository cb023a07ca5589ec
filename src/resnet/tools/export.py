"""``resnet export``: a checkpoint as ONNX or TorchScript, checked against PyTorch.

The exported graph takes a normalized float32 batch ``(N, 3, S, S)`` (N is dynamic)
and returns logits ``(N, num_classes)``, divided by the run's temperature when ``resnet
calibrate`` fitted one (so their softmax is ``resnet predict``'s probabilities). What a
caller needs to use it travels inside the file: class names, mean, std, input size, the
temperature and the image preprocessing step by step (ONNX: ``metadata_props``, each value
a JSON string; TorchScript: the extra file ``resnet.json``). After writing, the file is
loaded back with its own runtime and compared with the PyTorch model on random input;
the export fails if they differ by more than the tolerance.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet.errors import ResnetError
from resnet.version import __version__
from resnet.util.optional import require
from resnet.tools.calibration import TemperatureScaled
from resnet.tools.evaluation import load_model_from_checkpoint

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TORCHSCRIPT_EXTRA = "resnet.json"


def export_metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    norm = checkpoint["normalization"]
    size = norm["image_size"]
    return {
        "arch": checkpoint["arch"],
        "classes": list(checkpoint["classes"]),
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
        "image_size": size,
        "input": f"float32 (N, 3, {size}, {size}): RGB resized to {size}x{size}, scaled to [0, 1], "
                 "then (x - mean) / std per channel",
        "preprocessing": preprocessing_steps(size),
        "output": "logits (N, num_classes); softmax gives probabilities" if checkpoint.get("temperature", 1.0) == 1
                  else "logits (N, num_classes), already divided by the temperature; softmax gives the calibrated "
                       "probabilities",
        "temperature": checkpoint.get("temperature", 1.0),  # resnet calibrate's (1: not calibrated)
        "resnet_version": __version__,
    }


def preprocessing_steps(size: int) -> list[str]:
    """What ``resnet predict`` does to an image file before the model, step by step, so that
    a caller of the exported file gets the same probabilities (``data.open_rgb``, then
    ``data._ResizeToTensor``, then ``augment.Normalize``)."""
    return [
        "open the file with PIL; apply its EXIF orientation (PIL.ImageOps.exif_transpose)",
        "grayscale deeper than 8 bits (PIL modes I;16, I, F): scale its full range (65535 for 16 bits) to 0-255",
        "an image with alpha or a transparent colour: composite it on an opaque white background",
        "convert to RGB (PIL Image.convert('RGB'))",
        f"resize to ({size}, {size}) with PIL Image.resize(..., Image.BILINEAR), squashing the aspect "
        "ratio (no crop)",
        "float32, divided by 255",
        "subtract mean and divide by std, per RGB channel",
        "lay out as NCHW: (N, 3, height, width)",
    ]


def require_onnx() -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        require(module, "export", "ONNX export")


def export_onnx(model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], out: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False,
                                    verbose=False)
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(out))


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: images.numpy()})[0])


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: json.loads(entry.value) for entry in model.metadata_props}


def export_torchscript(model: nn.Module, example: torch.Tensor, metadata: dict[str, Any], out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    extra = {TORCHSCRIPT_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[TORCHSCRIPT_EXTRA] or "{}")


def run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    module, _ = load_torchscript(path)
    with torch.no_grad():
        return module(images)


def export_checkpoint(path: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
                      tolerance: float = 1e-3, check_batch: int = 3) -> dict[str, Any]:
    """Export, reload, and compare on a random batch of ``check_batch`` images (a batch size
    other than the export's example, so the dynamic batch axis is exercised too)."""

    if fmt not in FORMATS:
        raise ResnetError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    model, checkpoint = load_model_from_checkpoint(path)
    if checkpoint["temperature"] != 1:  # inside the graph: its softmax is then what resnet predict gives

        model = TemperatureScaled(model, checkpoint["temperature"])
    if out is None:
        source = Path(checkpoint["path"])
        out = source.with_name(source.stem + SUFFIXES[fmt])
    out = Path(out)
    if out.is_dir():
        raise ResnetError(f"--out {out} is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResnetError(f"cannot write {out}: {error.strerror or error}") from None

    metadata = export_metadata(checkpoint)
    size = metadata["image_size"]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    if fmt == "onnx":
        export_onnx(model, example, metadata, out)
    else:
        export_torchscript(model, example, metadata, out)

    images = torch.randn(check_batch, 3, size, size, generator=generator)
    with torch.no_grad():
        expected = model(images)
    got = run_onnx(out, images) if fmt == "onnx" else run_torchscript(out, images)
    if got.shape != expected.shape:
        raise ResnetError(f"the exported model returned shape {tuple(got.shape)} for a batch of {check_batch}, "
                          f"PyTorch {tuple(expected.shape)}; {out} kept for inspection")
    difference = (got.float() - expected).abs().max().item()
    if not difference <= tolerance:  # also catches NaN
        raise ResnetError(f"the exported model differs from PyTorch by up to {difference:.3g} "
                          f"(tolerance {tolerance:g}); {out} kept for inspection")
    return {"out": str(out), "format": fmt, "checkpoint": checkpoint["path"], "arch": checkpoint["arch"],
            "weights": checkpoint["weights_used"], "max_abs_diff": difference, "check_batch": check_batch,
            "image_size": size, "classes": len(checkpoint["classes"]), "bytes": out.stat().st_size}
