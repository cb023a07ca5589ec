"""Petals: a small built-in image dataset, drawn procedurally, so training runs offline.

Each image is one flower on a textured background. The class is the petal shape
(five kinds: round, pointed, thin, tipped in a second colour, hollow) crossed with the
petal count (four or eight): ten classes. Colour,
size, rotation, position, centre and background vary at random, so the class
must be read from the geometry. Everything is deterministic from the seed.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("round", "pointed", "thin", "tipped", "hollow")
COUNTS = (4, 8)
CLASSES = [f"{count}-{shape}" for shape in SHAPES for count in COUNTS]


def petal_radius(shape: str, count: int, theta: np.ndarray) -> np.ndarray:
    """Outer radius (as a fraction of the flower radius) of a petal shape at each angle."""
    phase = np.abs(np.cos(count * theta / 2))  # 1 at each petal's axis, 0 between petals
    if shape == "round":
        return 0.35 + 0.65 * phase ** 0.5
    if shape == "pointed":
        saw = 1 - np.abs(((count * theta / (2 * np.pi)) % 1) * 2 - 1)  # triangle wave
        return 0.3 + 0.7 * saw ** 2
    if shape == "thin":
        return 0.2 + 0.8 * phase ** 12
    if shape in ("tipped", "hollow"):
        return 0.35 + 0.65 * phase ** 0.5
    raise ValueError(f"unknown petal shape {shape!r}")


def draw_flower(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One (3, size, size) uint8 image of class ``label``."""
    shape, count = SHAPES[label // len(COUNTS)], COUNTS[label % len(COUNTS)]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: a colour gradient plus noise.
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    direction = rng.uniform(0, 2 * np.pi)
    t = (np.cos(direction) * xs + np.sin(direction) * ys + 1) / 2
    image = (1 - t)[..., None] * c0 * 0.6 + t[..., None] * c1 * 0.6
    image += rng.normal(0, 0.03, (size, size, 3))
    # The flower: centre, radius and rotation at random.
    radius = rng.uniform(0.3, 0.45)
    cx, cy = rng.uniform(radius * 0.8, 1 - radius * 0.8, 2)
    dx, dy = xs - cx, ys - cy
    r = np.hypot(dx, dy) / radius
    theta = np.arctan2(dy, dx) - rng.uniform(0, 2 * np.pi)
    outer = petal_radius(shape, count, theta)
    petals = r < outer
    if shape == "hollow":
        petals &= r > outer - 0.22
    petal_colour = rng.uniform(0.35, 1, 3)
    petal_colour[rng.integers(3)] = rng.uniform(0, 0.3)  # a saturated hue
    shade = 1 - 0.35 * r[..., None]
    image = np.where(petals[..., None], petal_colour * shade, image)
    if shape == "tipped":
        tips = petals & (r > outer * 0.7)
        image = np.where(tips[..., None], (1 - petal_colour) * 0.9 + 0.05, image)
    disc = r < rng.uniform(0.15, 0.25)
    image = np.where(disc[..., None], rng.uniform(0.3, 1, 3) * rng.uniform(0.4, 0.8), image)
    image = np.clip(image + rng.normal(0, 0.02, (size, size, 3)), 0, 1)
    return (image * 255).astype(np.uint8).transpose(2, 0, 1)


def make_petals(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 3, size, size) uint8 and labels (n,) int64, classes balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.stack([draw_flower(rng, int(label), size) for label in labels]) if n else np.zeros(
        (0, 3, size, size), np.uint8)
    return images, labels.astype(np.int64)
