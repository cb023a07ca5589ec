"""One config object for a training run: defaults, recipes, dataset presets, overrides.

Precedence, lowest first: the field defaults below (the default recipe), the
dataset's preset (image size and length that suit it), the recipe, and finally
every option given on the command line. The resolved config is saved with the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from resnet.errors import ResnetError


def option(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text, for the command line built from these fields."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    dataset: str = option("petals", "petals (built in) | flowers102 | imagefolder")
    data_dir: str | None = option(None, "where the dataset is: the folder holding flowers-102/, or the image folder")
    split: str = option("tutorial", "flowers102: tutorial (train on 'test', evaluate on 'train') | official")
    val_fraction: float = option(0.2, "imagefolder without train/ and val/: share of each class held out")
    strict: bool = option(False, "an unreadable image is an error instead of a warning")
    # model
    arch: str = option("resnet18", "the architecture (resnet list)")
    zero_init_residual: bool = option(True, "start each residual branch's last BatchNorm at zero")
    weights: str | None = option(None, "initial weights: imagenet, or a checkpoint / state_dict file")
    freeze_backbone: bool = option(False, "train the classifier only: a linear probe")
    head_epochs: int | None = option(None, "epochs training the head alone first (default: 1 with --weights, else 0)")
    backbone_lr_scale: float | None = option(
        None, "backbone lr / head lr after the head epochs (default: 0.1 with --weights, else 1)")
    # recipe
    recipe: str = option("default", "default (ours) | tutorial (the tutorial's, exactly)")
    epochs: int = option(40, "training epochs")
    batch_size: int = option(16, "images per optimizer step (the global batch under torchrun)")
    image_size: int = option(112, "training crop side, pixels")
    eval_image_size: int | None = option(
        None, "evaluation resize (default: image size * 10/7, FixRes; petals at their preset 56: 64)")
    cache_size: int | None = option(None, "side of the decoded training cache (default: image size * 8/7)")
    optimizer: str = option("sgd", "sgd (with --momentum and --nesterov) | adamw (decoupled weight decay)")
    lr: float = option(0.025, "peak learning rate, for this batch size")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "on conv / linear weights only, never on BatchNorm or biases")
    warmup_epochs: float = option(2.0, "linear learning-rate warmup, epochs")
    schedule: str = option("cosine", "learning rate after warmup: cosine (to zero) | constant")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    ema_decay: float = option(0.0, "per-step decay of an evaluated weight average (0: off)")
    tta: bool = option(True, "evaluate each image and its mirror image, averaging their logits")
    rotation: float = option(30.0, "random rotation, degrees either way")
    min_scale: float = option(0.25, "smallest area fraction of the random-resized crop")
    hflip: float = option(0.5, "probability of a horizontal flip")
    vflip: float = option(0.0, "probability of a vertical flip")
    color_jitter: float = option(0.2, "brightness, contrast and saturation jitter")
    # engine
    precision: str = option("auto", "auto (bf16 or fp16 where supported, else fp32) | fp32 | bf16 | fp16")
    device: str = option("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    pipeline: str = option("fast", "fast (decoded cache + batched augmentation) | classic (the tutorial's)")
    compile: bool = option(False, "torch.compile the model")
    channels_last: bool = option(True, "channels-last memory format")
    workers: int = option(2, "decoding / classic DataLoader processes")
    sync_bn: bool = option(False, "under torchrun: SyncBatchNorm across ranks")
    seed: int = option(0, "seeds the initialization, the batches and the augmentation")
    out: str | None = option(None, "the run directory (default: runs/<dataset>-<arch>-<timestamp>)")
    quiet: bool = option(False, "one line per epoch instead of progress bars")

    def resolved_eval_image_size(self) -> int:
        # FixRes (Touvron et al., 2019): random-resized crops show objects larger than a
        # full view of the image does, so evaluation at a larger size matches training.
        return self.eval_image_size or round(self.image_size * 10 / 7)

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
        """A config from saved or given values; unknown keys are ignored, old names renamed."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in current_names(values).items() if k in known})


# The tutorial's recipe and split were once both called "seed", a third meaning beside
# --seed. Run directories and checkpoints written then still say so.
LEGACY_NAMES: dict[str, dict[str, str]] = {"recipe": {"seed": "tutorial"}, "split": {"seed": "tutorial"}}


def current_names(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old names of choice values replaced by today's."""
    return {key: LEGACY_NAMES[key].get(value, value) if key in LEGACY_NAMES and isinstance(value, str) else value
            for key, value in values.items()}


# The tutorial's recipe, exactly: SGD 0.02 / 0.9 without weight decay, batch 256, 500
# epochs, RandomRotation(30) + RandomResizedCrop(224) + both flips, Resize((224, 224)).
TUTORIAL_RECIPE: dict[str, Any] = dict(
    arch="resnet34", epochs=500, batch_size=256, image_size=224, eval_image_size=224, optimizer="sgd", lr=0.02,
    momentum=0.9, nesterov=False, weight_decay=0.0, warmup_epochs=0.0, schedule="constant", label_smoothing=0.0,
    ema_decay=0.0, tta=False, rotation=30.0, min_scale=0.08, hflip=0.5, vflip=0.5, color_jitter=0.0,
    zero_init_residual=False, seed=0,
)

RECIPES: dict[str, dict[str, Any]] = {"default": {}, "tutorial": TUTORIAL_RECIPE}

# What suits each dataset under the default recipe. The built-in petals are 64 px
# and small: a short run at their own size trains in minutes on a laptop CPU (without
# flip TTA, which would spend some of those minutes evaluating twice).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "petals": dict(image_size=56, eval_image_size=64, epochs=9, batch_size=32, lr=0.05,
                   rotation=30.0, min_scale=0.6, color_jitter=0.1, tta=False),
    "flowers102": {},
    "imagefolder": dict(image_size=224),
}


def resolve_config(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < dataset preset < recipe < explicit overrides (None means 'not given')."""
    given = current_names({k: v for k, v in overrides.items() if v is not None})
    recipe = given.get("recipe", "default")
    if recipe not in RECIPES:
        raise ResnetError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    dataset = given.get("dataset", TrainConfig.dataset)
    preset = dict(DATASET_PRESETS.get(dataset, {}))
    if "image_size" in given and "eval_image_size" not in given:
        # A preset's evaluation size suits the preset's training size; another training
        # size evaluates at its own 10/7, as the help says.
        preset.pop("eval_image_size", None)
    values: dict[str, Any] = {}
    values.update(preset)
    values.update(RECIPES[recipe])
    values.update(given)
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


# The allowed values of the config's choice fields, for validation and for the CLI.
CHOICES: dict[str, tuple[str, ...]] = dict(
    dataset=("petals", "flowers102", "imagefolder"), split=("tutorial", "official"), recipe=tuple(RECIPES),
    precision=("auto", "fp32", "bf16", "fp16"), device=("auto", "cpu", "cuda", "mps"),
    pipeline=("fast", "classic"), schedule=("cosine", "constant"), optimizer=("sgd", "adamw"),
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
    try:
        values = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as error:  # unreadable, or not JSON
        raise ResnetError(f"{run_dir / 'config.json'} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise ResnetError(f"{run_dir / 'config.json'} does not hold a config (a JSON object)")
    return TrainConfig.from_dict(values)

