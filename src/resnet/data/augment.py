"""Augmentation: the tutorial's per-image PIL transforms, and the same distributions
applied to a whole batch on the training device as one affine warp.

The batched path samples, per image, the parameters torchvision would sample
(rotation angle, random-resized-crop box, flips), composes them into one 2x3 matrix,
and resamples the batch once with ``affine_grid`` + ``grid_sample``.  Decoding and
per-image PIL work leave the hot loop entirely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentSpec:
    """The random transforms of training, with torchvision's meanings."""

    rotation: float = 30.0  # RandomRotation(degrees): angle ~ U(-rotation, rotation)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: fraction of the area kept
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio, log-uniform
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip
    color_jitter: float = 0.0  # brightness, contrast and saturation factors ~ U(1 - j, 1 + j)
    padding: int = 0  # RandomCrop(size, padding): whole pixel shifts in place of the resized crop


# --- the tutorial's transforms (the classic per-image pipeline) ---------------


def classic_train_transform(spec: AugmentSpec, image_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                            std: tuple[float, ...] = IMAGENET_STD) -> T.Compose:
    steps: list = []
    if spec.rotation:
        steps.append(T.RandomRotation(spec.rotation))
    if spec.padding:
        steps += [T.Resize((image_size, image_size)), T.RandomCrop(image_size, padding=spec.padding)]
    else:
        steps.append(T.RandomResizedCrop((image_size, image_size), scale=spec.scale, ratio=spec.ratio))
    steps += [T.RandomHorizontalFlip(spec.hflip), T.RandomVerticalFlip(spec.vflip)]
    if spec.color_jitter:
        j = spec.color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(list(mean), list(std))])


def classic_eval_transform(image_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                           std: tuple[float, ...] = IMAGENET_STD) -> T.Compose:
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(list(mean), list(std))])


# --- the batched path -------------------------------------------------------


def sample_crop_boxes(n: int, spec: AugmentSpec, generator: torch.Generator, attempts: int = 10) -> Tensor:
    """RandomResizedCrop boxes for ``n`` square images, as (cx, cy, w, h) in units of the side.

    torchvision's rule, vectorized: up to ten tries of area ~ U(scale) and log-ratio
    ~ U(log ratio); the first try that fits wins, and a sample with none falls back
    to the largest centered crop (the whole square image, within the ratio bounds).
    """
    area = torch.empty(n, attempts).uniform_(*spec.scale, generator=generator)
    log_ratio = torch.empty(n, attempts).uniform_(math.log(spec.ratio[0]), math.log(spec.ratio[1]),
                                                  generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt()
    h = (area / ratio).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(1)  # index of the first fitting try
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    ok = fits.any(1)
    w = torch.where(ok, w, torch.ones(n))
    h = torch.where(ok, h, torch.ones(n))
    # Top-left corner uniform over the integer-free continuum of valid positions.
    u = torch.rand(n, 2, generator=generator)
    x0 = torch.where(ok, u[:, 0] * (1 - w), torch.zeros(n))
    y0 = torch.where(ok, u[:, 1] * (1 - h), torch.zeros(n))
    return torch.stack([x0 + w / 2, y0 + h / 2, w, h], 1)


def sample_shift_boxes(n: int, padding: int, size: int, generator: torch.Generator) -> Tensor:
    """Pad-and-crop boxes, as (cx, cy, w, h) in units of the side: the whole image shifted by
    k ~ U{-padding, ..., padding} pixels of a ``size``-pixel output on each axis. Whole pixels
    put every output pixel's centre on an input pixel's, so the warp copies without blurring."""
    shift = torch.randint(-padding, padding + 1, (n, 2), generator=generator).float() / size
    return torch.cat([0.5 + shift, torch.ones(n, 2)], 1)


def sample_affine(n: int, spec: AugmentSpec, generator: torch.Generator, size: int) -> Tensor:
    """One 2x3 matrix per image mapping output coordinates to input coordinates.

    Coordinates are grid_sample's normalized [-1, 1]. The tutorial's order is
    rotate, then crop, then flip; as a map from output to input that is
    ``input = R (C f(output) + c)`` with f the flips, C the crop scale and c its centre.
    ``size``, the output side, sets the pixel of ``spec.padding``'s shifts.
    """
    angle = torch.empty(n).uniform_(-spec.rotation, spec.rotation, generator=generator) * (math.pi / 180)
    if spec.padding:
        box = sample_shift_boxes(n, spec.padding, size, generator)
    else:
        box = sample_crop_boxes(n, spec, generator)
    flips = torch.rand(n, 2, generator=generator)
    sx = torch.where(flips[:, 0] < spec.hflip, -1.0, 1.0)
    sy = torch.where(flips[:, 1] < spec.vflip, -1.0, 1.0)
    centre = box[:, :2] * 2 - 1  # [0, 1] -> [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    scale = torch.diag_embed(torch.stack([sx * box[:, 2], sy * box[:, 3]], 1))
    linear = rotation @ scale
    translation = rotation @ centre.unsqueeze(2)
    return torch.cat([linear, translation], 2)


def warp(images: Tensor, theta: Tensor, size: int) -> Tensor:
    """Resample a float batch (N, C, H, W) through per-image 2x3 matrices to size x size.

    Points outside the image read as 0, as RandomRotation's default fill does.
    """
    grid = F.affine_grid(theta.to(images.device, images.dtype), [images.shape[0], images.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter_colors(images: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast and saturation, one factor each per image, as ColorJitter applies them."""
    n = images.shape[0]
    factors = factors.to(images.device, images.dtype).view(n, 3, 1, 1, 1)
    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    images = images * factors[:, 0]
    mean_gray = (images * gray_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    images = (images - mean_gray) * factors[:, 1] + mean_gray
    gray = (images * gray_weights).sum(1, keepdim=True)
    images = (images - gray) * factors[:, 2] + gray
    return images.clamp_(0, 1)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for a batch: a warp per image, and colour factors when jittering."""

    theta: Tensor  # (n, 2, 3)
    jitter: Tensor | None  # (n, 3): brightness, contrast, saturation factors

    def __getitem__(self, index: slice) -> AugmentParams:
        return AugmentParams(self.theta[index], None if self.jitter is None else self.jitter[index])


def sample_params(n: int, spec: AugmentSpec, generator: torch.Generator, size: int) -> AugmentParams:
    theta = sample_affine(n, spec, generator, size)
    jitter = None
    if spec.color_jitter:
        jitter = torch.empty(n, 3).uniform_(1 - spec.color_jitter, 1 + spec.color_jitter, generator=generator)
    return AugmentParams(theta, jitter)


def apply_augment(images: Tensor, params: AugmentParams, size: int) -> Tensor:
    """uint8 (N, 3, S, S) on any device -> augmented float in [0, 1], (N, 3, size, size)."""
    out = warp(images.float().div_(255), params.theta, size)
    return out if params.jitter is None else jitter_colors(out, params.jitter)


class Normalize(torch.nn.Module):
    """uint8 or [0, 1] float images -> normalized float, channels_last."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        return ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def augment_batch(images: Tensor, spec: AugmentSpec, size: int, generator: torch.Generator) -> Tensor:
    """uint8 (N, 3, S, S) on any device -> augmented float in [0, 1], (N, 3, size, size)."""
    return apply_augment(images, sample_params(images.shape[0], spec, generator, size), size)
