"""Model summaries through torchinfo: the tutorial's table, and one line per model."""

from __future__ import annotations

from dataclasses import dataclass

import torchinfo
from torchinfo.enums import Units

from resnet.models.resnet import get_model, list_models


def summary_table(name: str, input_size: tuple[int, ...] = (1, 3, 224, 224), num_classes: int = 1000,
                  depth: int = 3, stem: str = "imagenet") -> str:
    """The torchinfo table of one architecture, as the tutorial prints it."""
    model = get_model(name, num_classes=num_classes, stem=stem)
    stats = torchinfo.summary(model, input_size=input_size, depth=depth, verbose=0, device="cpu")
    return _fix_unit_names(str(stats))


def _fix_unit_names(text: str) -> str:
    # torchinfo 1.8 formats its str-mixin Units enum with f"{unit}", which Python 3.11
    # changed to print "Units.GIGABYTES" instead of "G".
    for unit in Units:
        text = text.replace(f"({unit.__class__.__name__}.{unit.name})", f"({unit.value})")
    return text


@dataclass(frozen=True)
class ModelFacts:
    name: str
    params: int
    gmacs: float  # multiply-adds of one forward pass, in billions


def model_facts(name: str, image_size: int = 224, num_classes: int = 1000, stem: str = "imagenet") -> ModelFacts:
    model = get_model(name, num_classes=num_classes, stem=stem)
    stats = torchinfo.summary(model, input_size=(1, 3, image_size, image_size), verbose=0, device="cpu")
    return ModelFacts(name, stats.total_params, stats.total_mult_adds / 1e9)


def models_table(image_size: int = 224, num_classes: int = 1000, stem: str = "imagenet") -> str:
    """One line per registered architecture: name, parameters, GMACs."""
    lines = [f"{'model':<10} {'params':>12} {'GMACs@' + str(image_size):>10}"]
    for name in list_models():
        facts = model_facts(name, image_size, num_classes, stem)
        lines.append(f"{facts.name:<10} {facts.params:>12,} {facts.gmacs:>10.2f}")
    return "\n".join(lines)
