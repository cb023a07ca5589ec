"""One config object for a training run: defaults, recipes, dataset presets, overrides.

Precedence, lowest first: the field defaults below (the default recipe), the
dataset's preset (image size and length that suit it), the recipe, and finally
every option given on the command line. The resolved config is saved with the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from resnet.errors import ResnetError


@dataclass
class TrainConfig:
    # data
    dataset: str = "petals"  # petals | flowers102 | imagefolder
    data_dir: str | None = None
    split: str = "seed"  # flowers102: seed (the tutorial's) | official
    val_fraction: float = 0.2  # imagefolder without train/ and val/: held-out share per class
    strict: bool = False  # unreadable images are an error instead of a warning
    # model
    arch: str = "resnet18"
    zero_init_residual: bool = True
    weights: str | None = None  # imagenet | a checkpoint / state_dict file
    freeze_backbone: bool = False  # train the head only: a linear probe
    head_epochs: int | None = None  # epochs training the head alone first; None: 1 with --weights, else 0
    backbone_lr_scale: float | None = None  # backbone lr / head lr after that; None: 0.1 with --weights, else 1
    # recipe
    recipe: str = "default"
    epochs: int = 40
    batch_size: int = 64
    image_size: int = 112  # training crop, pixels
    eval_image_size: int | None = None  # evaluation resize; None: image_size * 8 / 7 (FixRes)
    cache_size: int | None = None  # side of the decoded training cache; None: image_size * 8 / 7
    lr: float = 0.1  # peak SGD learning rate, for this batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv / linear weights only, never on BN or biases
    warmup_epochs: float = 2.0
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # per-step decay of the weight average that is evaluated; 0 = off
    rotation: float = 30.0  # degrees
    min_scale: float = 0.25  # smallest area fraction of the random-resized-crop
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.2
    # engine
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | mps
    pipeline: str = "fast"  # fast (decoded cache + batched augmentation) | classic (the tutorial's)
    compile: bool = False
    channels_last: bool = True
    workers: int = 2  # decode / classic DataLoader processes
    sync_bn: bool = False  # under torchrun: SyncBatchNorm across ranks
    seed: int = 0
    out: str | None = None
    quiet: bool = False

    def resolved_eval_image_size(self) -> int:
        return self.eval_image_size or round(self.image_size * 8 / 7)

    def resolved_head_epochs(self) -> int:
        return self.head_epochs if self.head_epochs is not None else (1 if self.weights else 0)

    def resolved_backbone_lr_scale(self) -> float:
        return self.backbone_lr_scale if self.backbone_lr_scale is not None else (0.1 if self.weights else 1.0)

    def resolved_cache_size(self) -> int:
        return self.cache_size or round(self.image_size * 8 / 7)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# The tutorial's recipe, exactly: SGD 0.02 / 0.9 without weight decay, batch 256, 500
# epochs, RandomRotation(30) + RandomResizedCrop(224) + both flips, Resize((224, 224)).
SEED_RECIPE: dict[str, Any] = dict(
    arch="resnet34", epochs=500, batch_size=256, image_size=224, eval_image_size=224, lr=0.02, momentum=0.9,
    nesterov=False, weight_decay=0.0, warmup_epochs=0.0, schedule="constant", label_smoothing=0.0,
    ema_decay=0.0, rotation=30.0, min_scale=0.08, hflip=0.5, vflip=0.5, color_jitter=0.0,
    zero_init_residual=False, seed=0,
)

RECIPES: dict[str, dict[str, Any]] = {"default": {}, "seed": SEED_RECIPE}

# What suits each dataset under the default recipe. The built-in petals are 64 px
# and small: a short run at their own size trains in minutes on a laptop CPU.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "petals": dict(image_size=56, epochs=10, batch_size=32, lr=0.05,
                   rotation=30.0, min_scale=0.6, color_jitter=0.1),
    "flowers102": {},
    "imagefolder": dict(image_size=224),
}


def resolve_config(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < dataset preset < recipe < explicit overrides (None means 'not given')."""
    given = {k: v for k, v in overrides.items() if v is not None}
    recipe = given.get("recipe", "default")
    if recipe not in RECIPES:
        raise ResnetError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    dataset = given.get("dataset", TrainConfig.dataset)
    values: dict[str, Any] = {}
    values.update(DATASET_PRESETS.get(dataset, {}))
    values.update(RECIPES[recipe])
    values.update(given)
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


# The allowed values of the config's choice fields, for validation and for the CLI.
CHOICES: dict[str, tuple[str, ...]] = dict(
    dataset=("petals", "flowers102", "imagefolder"), split=("seed", "official"), recipe=tuple(RECIPES),
    precision=("auto", "fp32", "bf16", "fp16"), device=("auto", "cpu", "cuda", "mps"),
    pipeline=("fast", "classic"), schedule=("cosine", "constant"),
)


def validate(config: TrainConfig) -> None:
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ResnetError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                              f"got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(config, name) < 1:
            raise ResnetError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.image_size < 32:
        raise ResnetError(f"--image-size must be at least 32 (a ResNet downsamples by 32), got {config.image_size}")
    if config.lr <= 0:
        raise ResnetError(f"--lr must be positive, got {config.lr}")
    if not 0 < config.min_scale <= 1:
        raise ResnetError(f"--min-scale must be in (0, 1], got {config.min_scale}")
    if config.backbone_lr_scale is not None and config.backbone_lr_scale < 0:
        raise ResnetError(f"--backbone-lr-scale must be at least 0, got {config.backbone_lr_scale}")
    if not 0 <= config.ema_decay < 1:
        raise ResnetError(f"--ema-decay must be in [0, 1), got {config.ema_decay}")


def load_config(run_dir: Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))

