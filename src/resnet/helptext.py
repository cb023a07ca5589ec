"""What ``resnet train --help`` says an option is when it is not given.

A field's default alone would mislead: the dataset's preset, the recipe and the small-image
defaults replace many of them. Each option's help therefore names its value for each dataset
(petals, the default, first), then each recipe that sets another, then the small-image
defaults, all read from the tables ``resolve_config`` uses, so the help cannot drift from them.
"""

from __future__ import annotations

from dataclasses import MISSING, Field
from typing import Any

from resnet.config import (CHOICES, DATASET_PRESETS, RECIPES, SIZE_OPTIONS, SMALL_IMAGE_SIDE, flag,
                           small_image_preset)

# The small-image values that follow the images' size, in words (the test checks the list).
SIDE_WORDS = {"image_size": "their size", "eval_image_size": "their size", "cache_size": "their size",
              "crop_padding": "1/8 of their size"}
# A field's help ends with this when its default is None, saying what the run takes instead.
NONE_MARK = " (default: "


def train_description() -> str:
    """The description of ``resnet train``: where an option not given takes its value from."""
    sizes = ", ".join(flag(name) for name in SIZE_OPTIONS)
    return ("Train a ResNet. An option not given takes the value of the recipe (--recipe), else of the "
            "dataset's preset (--dataset), else the default recipe's: each option's help names them. An image "
            f"folder of small images ({SMALL_IMAGE_SIDE} px or less on the shorter side) gets the small-image "
            f"defaults ('small images' below) unless one of {sizes} is given. The resolved config is saved as "
            "RUN_DIR/config.json.")


def field_help(field: Field, extra: str = "") -> str:
    """A config field's ``--help`` text: its own words, ``extra``, and its default in full.
    Escaped for argparse, which %-formats help texts."""
    text, none_means = split_help(field)
    return f"{text}{extra} ({default_note(field.name, field.default, none_means)})".replace("%", "%%")


def split_help(field: Field) -> tuple[str, str]:
    """The help text, and for a None default what the run takes instead (the text's
    closing ``(default: ...)``, else "none")."""
    text = field.metadata["help"]
    if field.default is None and text.endswith(")") and NONE_MARK in text:
        text, _, none_means = text.rpartition(NONE_MARK)
        return text, none_means[:-1]
    return text, "none"


def default_note(name: str, default: Any, none_means: str = "none") -> str:
    """``default: ...`` for the config field ``name``: by dataset, then the recipes and the
    small-image defaults where they differ."""
    if default is MISSING:
        raise ValueError(f"{name} has no default")
    by_dataset = {dataset: DATASET_PRESETS.get(dataset, {}).get(name, default) for dataset in CHOICES["dataset"]}
    parts = [dataset_values(by_dataset, none_means)]
    recipes = [f"{shown(values[name], none_means)} with --recipe {recipe}" for recipe, values in RECIPES.items()
               if name in values and any(values[name] != value for value in by_dataset.values())]
    if recipes:
        parts.append(", ".join(recipes))
    small = small_image_values(name, by_dataset["imagefolder"], none_means)
    if small:
        parts.append(f"small images: {small}")
    return "default: " + "; ".join(parts)


def dataset_values(by_dataset: dict[str, Any], none_means: str) -> str:
    """One value, or each value with the datasets that have it, in the datasets' order; the
    datasets without a value (None) last, as "else": what they take is a phrase, not a number."""
    groups: dict[str, list[str]] = {}
    for dataset, value in by_dataset.items():
        groups.setdefault(shown(value, none_means), []).append(dataset)
    if len(groups) == 1:
        return next(iter(groups))
    named = [f"{value} for {' and '.join(datasets)}" for value, datasets in groups.items()
             if None not in (by_dataset[d] for d in datasets)]
    return ", ".join(named + ([f"else {none_means}"] if None in by_dataset.values() else []))


def small_image_values(name: str, imagefolder_value: Any, none_means: str) -> str:
    """What the small-image defaults give ``name``, on a CPU and on a GPU; empty when they
    leave the image folder's value."""
    values = {}
    for device, where in (("cpu", "on a CPU"), ("cuda", "on a GPU")):
        preset = small_image_preset(SMALL_IMAGE_SIDE, device)
        if name not in preset:
            values[where] = shown(imagefolder_value, none_means)
        elif name in SIDE_WORDS:
            values[where] = SIDE_WORDS[name]
        else:
            values[where] = shown(preset[name], none_means)
    if set(values.values()) == {shown(imagefolder_value, none_means)}:
        return ""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{value} {where}" for where, value in values.items())


def shown(value: Any, none_means: str) -> str:
    """A value as the help shows it: on / off, numbers as written, None and "" in words."""
    if value is None:
        return none_means
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "none"
