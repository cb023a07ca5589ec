"""Grad-CAM: which parts of an image drove a class's score (``resnet explain``, the app).

Grad-CAM (Selvaraju et al., 2017) weights a convolutional layer's feature maps by the
spatially averaged gradient of one class's logit and keeps the positive part. We use
captum's ``LayerGradCam``: captum is PyTorch's own interpretability library, needs
nothing beyond torch and numpy, and its attribution methods are tested against the
papers; pytorch-grad-cam would pull in OpenCV, scikit-learn and ttach for the same map.

Flip TTA and Grad-CAM: the probabilities come from the model exactly as ``resnet
predict`` runs it (the mean of the image's and its mirror's logits when the run used
flip TTA), but the map is computed on the un-flipped view of the underlying ResNet,
so that it lines up with the image as shown. ``layer4`` (the last stage, 1/32 of the
input size) is the usual choice: the most class-specific features with some spatial
detail left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnet.data.sources import printable
from resnet.errors import ResnetError
from resnet.util.optional import require
from resnet.models.resnet import FlipTTA
from resnet.util.plots import labels_in_any_script
from resnet.data.augment import Normalize
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.tools.prediction import describe_error, image_files, load_image, rank_classes

OVERLAY_ALPHA = 0.45  # share of the heatmap in the overlay: enough to see, little enough to see through


def underlying_resnet(model: nn.Module) -> nn.Module:
    """The network inside the flip-TTA wrapper (or the model itself)."""
    return model.model if isinstance(model, FlipTTA) else model


def find_layer(model: nn.Module, name: str) -> nn.Module:
    layers = dict(underlying_resnet(model).named_modules())
    if name not in layers or not name:
        stages = [n for n in layers if n.startswith("layer") and "." not in n]
        raise ResnetError(f"the model has no layer {name!r} (e.g. {', '.join(stages)}; or a block like layer4.1)")
    return layers[name]


def class_index(classes: list[str], name: str | None, default: int) -> int:
    """The index of a class name (None: ``default``); an unknown name is a ResnetError."""
    if name is None:
        return default
    if name not in classes:
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise ResnetError(f"unknown class {name!r}; the checkpoint's classes are: {shown}")
    return classes.index(name)


def grad_cam(model: nn.Module, image: torch.Tensor, target: int, layer: str = "layer4") -> torch.Tensor:
    """The Grad-CAM map of class ``target`` for one normalized image (3, H, W).

    Returns a float (H, W) map in [0, 1] (bilinearly upsampled from the layer's grid,
    divided by its maximum; all zeros when no region speaks for the class).
    """
    attr = require("captum.attr", "explain", "Grad-CAM")
    network = underlying_resnet(model).eval()
    cam = attr.LayerGradCam(network, find_layer(network, layer))
    x = image[None].float().to(next(network.parameters()).device)
    with torch.enable_grad():
        coarse = cam.attribute(x, target=int(target), relu_attributions=True)
    fine = attr.LayerAttribution.interpolate(coarse, tuple(image.shape[-2:]), interpolate_mode="bilinear")
    fine = fine[0, 0].detach().float().cpu().clamp_(min=0)
    peak = fine.max()
    return fine / peak if peak > 0 else fine


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3): the image (uint8 (3, H, W)) blended with the map in the 'jet' colours."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam.numpy())[..., :3]
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255
    return np.round(255 * ((1 - alpha) * rgb + alpha * heat)).clip(0, 255).astype(np.uint8)


@dataclass
class Explanation:
    path: str
    top: list[tuple[str, float]]  # (class, probability), best first, as resnet predict gives them
    target: str  # the class the map explains
    probability: float  # the model's probability of ``target``
    cam: torch.Tensor  # (H, W) in [0, 1] at the model's input size
    overlay: np.ndarray  # uint8 (H, W, 3)


def explain_image(model: nn.Module, checkpoint: dict[str, Any], path: str | os.PathLike, class_name: str | None = None,
                  layer: str = "layer4", top_k: int = 5, device: torch.device | str = "cpu") -> Explanation:
    """Top-k probabilities (``resnet predict``'s: the same decoding and ``rank_classes``) and
    the Grad-CAM overlay of ``class_name`` (default: the top class), from one decoding of
    the file. An unreadable image is a ResnetError."""

    classes, norm = checkpoint["classes"], checkpoint["normalization"]
    try:
        image = load_image(path, norm["image_size"])
    except Exception as error:  # not an image, truncated, unreadable
        raise ResnetError(f"{path}: {describe_error(error, path)}") from None
    normalize = Normalize(tuple(norm["mean"]), tuple(norm["std"])).to(device)
    normalized = normalize(image[None].to(device))
    temperature = checkpoint.get("temperature", 1.0)  # resnet calibrate's, as resnet predict divides by it
    top = rank_classes(model.eval().to(device), normalized, classes, len(classes), temperature)[0]
    target = classes[class_index(classes, class_name, classes.index(top[0][0]))]
    cam = grad_cam(model, normalized[0], classes.index(target), layer)
    return Explanation(str(path), top[:top_k], target, dict(top)[target], cam, overlay(image, cam))


@labels_in_any_script()
def save_overlay(explanation: Explanation, path: Path) -> None:
    """The overlay as a PNG titled with the class and its probability."""
    import matplotlib.pyplot as plt  # headless: resnet.util.plots chose the Agg backend

    fig, ax = plt.subplots(figsize=(4, 4.4))
    ax.imshow(explanation.overlay)
    ax.set_title(f"{printable(explanation.target)}: {100 * explanation.probability:.1f}%", fontsize=11)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def unused_name(folder: Path, stem: str, written: set) -> Path:
    """``folder/<stem>.cam.png``, or ``<stem>-2.cam.png``... when this call already wrote that one."""
    n = 1
    while (path := folder / (f"{stem}.cam.png" if n == 1 else f"{stem}-{n}.cam.png")) in written:
        n += 1
    return path


def explain_files(checkpoint_path: str | os.PathLike, images: list[str], out: str | os.PathLike,
                  class_name: str | None = None, layer: str = "layer4") -> list[tuple[str, Path | str]]:
    """``resnet explain``: ``OUT/<stem>.cam.png`` per image (``<stem>-2.cam.png`` for a second
    image of the same stem). Returns ``(image, written file or why not)`` in input order; one
    unreadable image does not stop the others."""

    require("captum.attr", "explain", "Grad-CAM")
    model, checkpoint = load_model_from_checkpoint(checkpoint_path)
    class_index(checkpoint["classes"], class_name, 0)  # an unknown name fails before any work
    find_layer(model, layer)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, Path | str]] = []
    for path, problem in image_files(images):
        if problem is not None:
            results.append((path, problem))
            continue
        try:
            explanation = explain_image(model, checkpoint, path, class_name, layer)
        except ResnetError as error:
            results.append((path, str(error).removeprefix(f"{path}: ")))
            continue
        target = unused_name(out_dir, Path(path).stem, {r for _, r in results})
        save_overlay(explanation, target)
        results.append((path, target))
    return results
