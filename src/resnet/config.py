"""One config object for a training run: defaults, recipes, dataset presets, overrides.

Precedence, lowest first: the field defaults below (the default recipe), the
dataset's preset (image size and length that suit it), the recipe, and finally
every option given on the command line. The resolved config is saved with the run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from resnet.errors import ResnetError
from resnet.models.resnet import STEMS, list_models


def option(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text, for the command line built from these fields."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    dataset: str = option("petals", "petals (built in) | flowers102 | imagefolder")
    data_dir: str | None = option(None, "where the dataset is: the folder holding flowers-102/, or the image folder "
                                        "(default: for flowers102, $RESNET_DATA, else ~/.cache/resnet/data; with "
                                        "--labels, the label file's folder)")
    split: str = option("tutorial", "flowers102: tutorial (train on 'test', evaluate on 'train') | official")
    labels: str | None = option(None, "a CSV or TSV label file (columns: path, label, optionally split), its "
                                      "paths relative to --data-dir, else to the file's folder; implies imagefolder")
    val_fraction: float = option(0.2, "imagefolder without train/ and val/ (or a label file without a split "
                                      "column): share of each class held out")
    balance: str = option("none", "class imbalance: none | loss (inverse-frequency class weights in the loss) | "
                                  "sampler (each epoch draws the classes evenly)")
    strict: bool = option(False, "an unreadable image is an error instead of a warning")
    # model
    arch: str = option("resnet18", "the architecture (resnet list)")
    stem: str = option("imagenet", "imagenet (7x7 stride-2 convolution and max-pool) | small (3x3 stride 1, no "
                                   "max-pool: for images of about 32 px, as CIFAR ResNets) | small-pool (the "
                                   "small stem's convolution, then the max-pool: a quarter of its cost)")
    zero_init_residual: bool = option(True, "start each residual branch's last BatchNorm at zero")
    weights: str | None = option(None, "initial weights: imagenet, or a checkpoint / state_dict file "
                                          "(default: none: random initialization)")
    freeze_backbone: bool = option(False, "train the classifier only: a linear probe")
    head_epochs: int | None = option(None, "epochs training the head alone first (default: 1 with --weights, else 0)")
    backbone_lr_scale: float | None = option(
        None, "backbone lr / head lr after the head epochs (default: 0.1 with --weights, else 1)")
    # recipe
    recipe: str = option("default", "default (ours) | fast (ours, shorter, progressive resizing) | "
                                    "tutorial (the original blog tutorial's, exactly: resnet34 at 224 px, SGD "
                                    "at lr 0.02, 500 epochs)")
    epochs: int = option(64, "training epochs")
    eval_every: int | None = option(None, "evaluate after every N epochs and after the last (0: after the last "
                                          "only) (default: epochs / 10, rounded, at least 1: about ten a run)")
    batch_size: int = option(32, "images per optimizer step (the global batch under torchrun)")
    image_size: int = option(112, "training crop side, pixels (with --min-image-size: the final one)")
    min_image_size: int | None = option(
        None, "progressive resizing: the training crop grows from this size to --image-size (equal to "
              "--image-size: one size throughout) (default: 4/7 of --image-size, rounded down to a multiple of 16, "
              "at least 32, under the default and fast recipes; one size throughout for petals, with --recipe "
              "tutorial and for small images)")
    progressive_from: float = option(0.0, "progressive resizing: fraction of the epochs trained at "
                                          "--min-image-size before the crop starts to grow")
    progressive_until: float = option(0.85, "progressive resizing: fraction of the epochs by which the crop "
                                            "reaches --image-size")
    progressive_step: int = option(16, "progressive resizing: the smaller crops are multiples of this, each "
                                       "trained for an equal share of the ramp")
    eval_image_size: int | None = option(
        None, "evaluation resize, pixels; a dataset preset's value holds with the preset's --image-size only "
              "(default: the training size over the mean side of a random-resized crop (FixRes), 9/7 of "
              "--image-size at --min-scale 0.25, or --image-size with --crop-padding)")
    cache_size: int | None = option(None, "side of the decoded training cache (default: 8/7 of --image-size)")
    optimizer: str = option("sgd", "sgd (with --momentum and --nesterov) | adamw (decoupled weight decay)")
    lr: float = option(0.05, "peak learning rate, for this batch size")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "on conv / linear weights only, never on BatchNorm or biases")
    warmup_epochs: float = option(2.0, "linear learning-rate warmup, epochs (with the cosine schedule at most half "
                                              "the run)")
    schedule: str = option("cosine", "learning rate after warmup: cosine (to zero) | constant")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    mixup: float = option(0.0, "MixUp's alpha: a mixed batch blends each image and its label with the batch's "
                               "previous one, keeping a share ~ Beta(alpha, alpha) (0: off; 0.2 is usual)")
    cutmix: float = option(0.0, "CutMix's alpha: a mixed batch pastes a box of the batch's previous image into "
                                "each one, the labels mixed by area, the share kept ~ Beta(alpha, alpha) (0: off; "
                                "1.0 is usual)")
    mix_prob: float = option(1.0, "with --mixup or --cutmix: the probability that a batch is mixed")
    mix_switch: float = option(0.5, "with --mixup and --cutmix: the probability that a mixed batch takes CutMix "
                                    "rather than MixUp")
    select_metric: str = option("top1", "the validation score that chooses best.pt: top1 | macro_f1 | "
                                        "balanced_accuracy (mean per-class recall)")
    patience: int = option(0, "early stopping: stop when --select-metric has not improved for N evaluations "
                              "(0: off); the lr schedule stays the one of all --epochs")
    ema_decay: float = option(0.0, "per-step decay of an evaluated weight average (0: off)")
    tta: bool = option(True, "evaluate each image and its mirror image, averaging their logits")
    rotation: float = option(30.0, "random rotation, degrees either way")
    min_scale: float = option(0.25, "smallest area fraction of the random-resized crop")
    crop_padding: int = option(0, "pad-and-crop instead of the random-resized crop, CIFAR's augmentation "
                                  "(torchvision's RandomCrop(size, padding=P)): each training image shifted "
                                  "by up to P pixels either way, the border black (0: off)")
    hflip: float = option(0.5, "probability of a horizontal flip")
    vflip: float = option(0.0, "probability of a vertical flip")
    color_jitter: float = option(0.2, "brightness, contrast and saturation jitter")
    # engine
    precision: str = option("auto", "auto (fp16 with loss scaling on a CUDA GPU, bf16 on a CPU that computes it "
                                    "natively, else fp32) | fp32 | bf16 | fp16")
    device: str = option("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    pipeline: str = option("fast", "fast (decoded cache + batched augmentation) | classic (the original "
                                    "tutorial's: per-image PIL transforms in DataLoader workers)")
    compile: bool = option(False, "torch.compile the model")
    cuda_graphs: str = option("auto", "the training step as a CUDA graph, captured once and replayed: auto (on "
                                      "with a CUDA GPU in one process without --compile, else off) | on | off")
    channels_last: bool = option(True, "channels-last memory format")
    workers: int | None = option(None, "decoding / classic DataLoader processes (default: one per CPU this "
                                       "process may use)")
    sync_bn: bool = option(False, "under torchrun: SyncBatchNorm across ranks")
    seed: int = option(0, "seeds the initialization, the batches and the augmentation")
    out: str | None = option(None, "the run directory (default: runs/<dataset>-<arch>-<timestamp>)")
    quiet: bool = option(False, "one line per epoch instead of progress bars")
    log: str = option("", "experiment trackers, comma-separated: tensorboard (RUN/tensorboard/) | mlflow "
                          "(MLFLOW_TRACKING_URI's store, else RUN/mlflow.db)")

    def resolved_eval_image_size(self) -> int:
        # FixRes (Touvron et al., 2019): a random-resized crop keeping a fraction s of the
        # area, resized to the training size, shows objects 1/sqrt(s) times larger than a
        # full view at that size. Evaluating at image_size / E[sqrt(s)], s ~ U(min_scale, 1),
        # matches their mean size: 9/7 of it at min_scale 0.25 (144 px for 112), about 10/7
        # at torchvision's 0.08 (benchmarks/results/flowers102-eval-sizes.md).
        if self.eval_image_size:
            return self.eval_image_size
        if self.crop_padding:
            return self.image_size  # shifted, not zoomed: objects keep their size
        a = self.min_scale
        mean_side = 1.0 if a >= 1 else 2 / 3 * (1 - a ** 1.5) / (1 - a)
        return round(self.image_size / mean_side)

    def resolved_head_epochs(self) -> int:
        return self.head_epochs if self.head_epochs is not None else (1 if self.weights else 0)

    def resolved_backbone_lr_scale(self) -> float:
        return self.backbone_lr_scale if self.backbone_lr_scale is not None else (0.1 if self.weights else 1.0)

    def resolved_cache_size(self) -> int:
        return self.cache_size or round(self.image_size * 8 / 7)

    def image_size_at(self, epoch: int) -> int:
        """The training crop of 0-based ``epoch``: a function of the epoch alone, so a
        resumed run trains at the sizes an uninterrupted one does.

        Progressive resizing (fast.ai's DAWNBench entry, FFCV's start and end of the ramp):
        small crops early are cheap and still teach the coarse features; the last epochs
        train at the full size, the one evaluation is matched to. The crop stays at
        ``min_image_size`` until ``progressive_from`` of the epochs; until
        ``progressive_until`` it then steps through the multiples of ``progressive_step``
        below the full size, an equal share of those epochs each (with 16: a linear ramp).
        """
        if self.min_image_size is None or self.min_image_size >= self.image_size:
            return self.image_size  # one size throughout, a multiple of 16 or not
        full_at = max(1, round(self.progressive_until * self.epochs)) - 1  # first epoch at full size
        if epoch >= full_at:
            return self.image_size
        ramp_at = round(self.progressive_from * self.epochs)  # the ramp's first epoch, still at the minimum
        grown = max(0, epoch - ramp_at) / max(1, full_at - ramp_at)
        sizes = self.ramp_sizes()
        return sizes[min(len(sizes) - 1, int(grown * len(sizes)))]

    def ramp_sizes(self) -> list[int]:
        """The crops below the full size that progressive resizing trains at, smallest first."""
        step = self.progressive_step
        smallest = max(32, self.min_image_size // step * step)  # the minimum rounded down to the step
        return list(range(smallest, self.image_size, step))

    def smallest_train_size(self) -> int:
        """The smallest crop the run trains at: the ramp's first, else the full size."""
        ramping = self.min_image_size is not None and self.min_image_size < self.image_size
        sizes = self.ramp_sizes() if ramping else []
        return sizes[0] if sizes else self.image_size

    def evaluates_after(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with an evaluation: every ``eval_every``-th does
        (none with 0), and the last always does, so a run's final score is never missing."""
        every = self.resolved_eval_every()
        return epoch + 1 == self.epochs or (every > 0 and (epoch + 1) % every == 0)

    def resolved_eval_every(self) -> int:
        # An evaluation (at a larger size than training, with flip TTA) costs a good part of a
        # training epoch: after every epoch it would take much of a short run (the figures:
        # docs/recipes.md, "Measurements behind the defaults").
        return self.eval_every if self.eval_every is not None else max(1, round(self.epochs / 10))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False)

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
    ema_decay=0.0, tta=False, eval_every=1, rotation=30.0, min_scale=0.08, hflip=0.5, vflip=0.5, color_jitter=0.0,
    zero_init_residual=False, seed=0,
)

# The default recipe, shorter (for time to accuracy on a CPU), with twice the peak lr (in
# these few epochs it reached more than the default's lr, and a higher one did no better) and
# one evaluation, after the last epoch: the evaluations along the way cost epochs' time. Its
# crops are multiples of 32 (64 then 96 px for 112): an 80 px crop gives layer4 the 3x3 map that
# 96 px does at nearly 96 px's cost on a CPU, so leaving it out leaves time for more epochs.
# Flowers-102, resnet18, 112 px: benchmarks/results/time-to-accuracy.md; the figures:
# docs/recipes.md, "Measurements behind the defaults".
FAST_RECIPE: dict[str, Any] = dict(epochs=36, lr=0.1, eval_every=0, progressive_step=32, progressive_until=0.88)

RECIPES: dict[str, dict[str, Any]] = {"default": {}, "fast": FAST_RECIPE, "tutorial": TUTORIAL_RECIPE}

# Ours train progressively from 4/7 of the final size (64 px for 112, 128 for 224) unless
# --min-image-size is given (equal to --image-size: one size throughout).
PROGRESSIVE_RECIPES = ("default", "fast")


def smallest_crop(image_size: int) -> int:
    return max(32, int(image_size * 4 / 7) // 16 * 16)


# What suits each dataset under the default recipe. The built-in petals are 64 px
# and small: a short run at their own size is quick on a CPU (without flip TTA, which
# would evaluate every image twice).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "petals": dict(image_size=56, eval_image_size=64, epochs=9, batch_size=32, lr=0.05, min_image_size=None,
                   rotation=30.0, min_scale=0.6, color_jitter=0.1, tta=False),
    "flowers102": {},
    "imagefolder": dict(image_size=224),
}


# Images no larger than this on the shorter side (CIFAR's 32 px, Tiny ImageNet's 64) get the
# small-image defaults when a run names no size or stem: the ImageNet stem would leave layer4
# a 1x1 map at 32 px, and the imagefolder preset's 224 px would upscale them 7 times.
SMALL_IMAGE_SIDE = 64
# The options that choose a run's image size or stem: any of them given keeps the defaults off.
SIZE_OPTIONS = ("image_size", "eval_image_size", "cache_size", "min_image_size", "stem", "recipe")

# The small-image recipe (benchmarks/results/cifar10.md): the images' own size, one size
# throughout, pad-and-crop by an eighth of the side (CIFAR's 4 px at 32) and flips, no rotation
# or colour jitter, SGD at the usual CIFAR rate for batch 128. With a GPU: resnet18 and the
# small stem (He et al.'s layout, layer1 at full size) for 30 epochs. On a CPU that step is far
# too slow for those epochs, so the CPU's recipe takes resnet10 and the small-pool stem (layer1
# at half size), several times cheaper, for a few epochs (the figures: docs/recipes.md,
# "Measurements behind the defaults").
SMALL_IMAGE_RECIPE: dict[str, Any] = dict(arch="resnet18", stem="small", min_image_size=None, rotation=0.0,
                                          color_jitter=0.0, batch_size=128, lr=0.1, epochs=30)
SMALL_IMAGE_CPU_RECIPE: dict[str, Any] = {**SMALL_IMAGE_RECIPE, "arch": "resnet10", "stem": "small-pool",
                                          "epochs": 4, "warmup_epochs": 0.3, "lr": 0.2}


def wants_image_defaults(overrides: dict[str, Any]) -> bool:
    """Whether a fresh run's options leave its image size and stem to the images themselves."""
    given = {k for k, v in overrides.items() if v is not None}
    return dataset_of(overrides) == "imagefolder" and not given & set(SIZE_OPTIONS)


def dataset_of(overrides: dict[str, Any]) -> str:
    """The dataset a run's options name: a data folder or a label file alone means an image folder
    (the built-in petals need neither)."""
    if overrides.get("dataset"):
        return overrides["dataset"]
    return "imagefolder" if overrides.get("labels") or overrides.get("data_dir") else TrainConfig.dataset


def small_image_preset(side: int, device_type: str = "cpu") -> dict[str, Any]:
    """The small-image defaults for images of ``side`` px on a ``device_type`` device."""
    size = max(32, side)  # smaller images are upscaled to the smallest size the checks allow
    recipe = SMALL_IMAGE_CPU_RECIPE if device_type == "cpu" else SMALL_IMAGE_RECIPE
    return {**recipe, "image_size": size, "eval_image_size": size, "cache_size": size,
            "crop_padding": max(1, size // 8)}


def resolve_config(overrides: dict[str, Any], image_side: int | None = None, device_type: str = "cpu") -> TrainConfig:
    """Defaults < dataset preset < the small-image preset < recipe < explicit overrides (None
    means 'not given'). ``image_side``: the images' typical shorter side, when the caller looked
    (``wants_image_defaults``); at most ``SMALL_IMAGE_SIDE`` it selects the small-image preset
    for the run's ``device_type`` (cpu, cuda or mps)."""
    given = current_names({k: v for k, v in overrides.items() if v is not None})
    recipe = given.get("recipe", "default")
    if recipe not in RECIPES:
        raise ResnetError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    dataset = dataset_of(given)
    preset = dict(DATASET_PRESETS.get(dataset, {}))
    if image_side is not None and image_side <= SMALL_IMAGE_SIDE and wants_image_defaults(overrides):
        preset.update(small_image_preset(image_side, device_type))
    if "image_size" in given and "eval_image_size" not in given:
        # A preset's evaluation size suits the preset's training size; another training
        # size evaluates at its own FixRes size, as the help says.
        preset.pop("eval_image_size", None)
    values: dict[str, Any] = {}
    values.update(preset)
    values.update(RECIPES[recipe])
    values.update(given)
    if recipe in PROGRESSIVE_RECIPES and "min_image_size" not in values:
        values["min_image_size"] = smallest_crop(values.get("image_size", TrainConfig.image_size))
    values.setdefault("dataset", dataset)
    if values.get("labels"):
        values["labels"] = absolute(values["labels"])
        values.setdefault("data_dir", os.path.dirname(values["labels"]))
    if values.get("data_dir"):
        # Stored absolute, so that the run's data is found from any working directory.
        values["data_dir"] = absolute(values["data_dir"])
    config = TrainConfig.from_dict(values)
    validate(config)
    return config


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


# The experiment trackers that --log can name.
TRACKERS = ("tensorboard", "mlflow")


def tracker_names(text: str) -> list[str]:
    """The trackers that ``--log`` names, comma-separated (empty: none); an unknown one is an error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ResnetError(f"--log must name trackers among {', '.join(TRACKERS)} (comma-separated), "
                          f"got {unknown[0]!r}")
    return list(dict.fromkeys(names))


# The allowed values of the config's choice fields, for validation and for the CLI.
CHOICES: dict[str, tuple[str, ...]] = dict(
    dataset=("petals", "flowers102", "imagefolder"), split=("tutorial", "official"), recipe=tuple(RECIPES),
    precision=("auto", "fp32", "bf16", "fp16"), device=("auto", "cpu", "cuda", "mps"),
    pipeline=("fast", "classic"), schedule=("cosine", "constant"), optimizer=("sgd", "adamw"),
    cuda_graphs=("auto", "on", "off"),
    stem=STEMS, balance=("none", "loss", "sampler"), select_metric=("top1", "macro_f1", "balanced_accuracy"),
)


# The largest image side (training, evaluation, cache): 2048 px already makes a decoded
# cache of 12.6 MB per image; a typo such as 100000 should be an error, not an allocation.
MAX_IMAGE_SIZE = 2048

# Numeric fields and their allowed ranges: (lowest, highest, whether highest is allowed).
AT_LEAST_ZERO = ("weight_decay", "warmup_epochs", "rotation", "color_jitter", "workers", "head_epochs", "eval_every",
                 "mixup", "cutmix", "patience", "crop_padding")
BELOW_ONE = ("momentum", "label_smoothing", "ema_decay")  # in [0, 1)
PROBABILITIES = ("hflip", "vflip", "mix_prob", "mix_switch")  # in [0, 1]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(config: TrainConfig) -> None:
    """Every field of a fresh or resumed config: its type, then its value; one line per problem."""
    check_types(config)
    if config.arch not in list_models():  # a hand-edited or newer config.json
        raise ResnetError(f"--arch must be one of {', '.join(list_models())}, got {config.arch!r}")
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ResnetError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "progressive_step"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ResnetError(f"{flag(name)} must be at least 1, got {getattr(config, name)}")
    check_ranges(config)
    if config.labels and config.dataset != "imagefolder":
        raise ResnetError(f"--labels reads an image folder; it cannot be used with --dataset {config.dataset}")
    if config.data_dir and config.dataset == "petals":
        raise ResnetError("--dataset petals is built in and reads no --data-dir; for your own images leave out "
                          "--dataset petals (or give --dataset imagefolder)")
    if not 0 < config.min_scale <= 1:  # before the sizes: the evaluation size is derived from it
        raise ResnetError(f"--min-scale must be in (0, 1], got {config.min_scale}")
    check_image_sizes(config)
    if config.lr <= 0:
        raise ResnetError(f"--lr must be positive, got {config.lr}")
    if not 0 < config.progressive_until <= 1:
        raise ResnetError(f"--progressive-until must be in (0, 1], got {config.progressive_until}")
    if not 0 <= config.progressive_from < config.progressive_until:
        raise ResnetError(f"--progressive-from must be at least 0 and below --progressive-until "
                          f"({config.progressive_until}), got {config.progressive_from}")
    if config.backbone_lr_scale is not None and config.backbone_lr_scale < 0:
        raise ResnetError(f"--backbone-lr-scale must be at least 0, got {config.backbone_lr_scale}")
    tracker_names(config.log)


def check_types(config: TrainConfig) -> None:
    """Types as declared (a hand-edited config.json can hold anything); floats must be finite."""
    kinds = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
    for f in fields(config):
        value, kind = getattr(config, f.name), f.type.removesuffix(" | None")
        if value is None and f.type.endswith("| None"):
            continue
        if not isinstance(value, kinds[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise ResnetError(f"{flag(f.name)} must be {'an' if kind == 'int' else 'a'} {kind}, got {value!r}")
        if kind == "float" and not math.isfinite(value):
            raise ResnetError(f"{flag(f.name)} must be a finite number, got {value}")


def check_ranges(config: TrainConfig) -> None:
    for name in AT_LEAST_ZERO:
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ResnetError(f"{flag(name)} must be at least 0, got {value}")
    for name in BELOW_ONE + PROBABILITIES:
        value, top = getattr(config, name), 1 if name in PROBABILITIES else None
        if not (0 <= value <= 1 if top else 0 <= value < 1):
            raise ResnetError(f"{flag(name)} must be in [0, 1{']' if top else ')'}, got {value}")


def check_image_sizes(config: TrainConfig) -> None:
    sizes = {"image_size": (config.image_size, ""),
             "eval_image_size": (config.resolved_eval_image_size(), "" if config.eval_image_size else
                                 " (from --image-size and --min-scale; give --eval-image-size)"),
             "cache_size": (config.resolved_cache_size(), "" if config.cache_size else
                            " (8/7 of --image-size; give --cache-size)")}
    for name, (value, note) in sizes.items():
        if value < 32:
            raise ResnetError(f"{flag(name)} must be at least 32 (a ResNet downsamples by 32), got {value}{note}")
        if value > MAX_IMAGE_SIZE:
            raise ResnetError(f"{flag(name)} must be at most {MAX_IMAGE_SIZE}, got {value}{note}")
    if config.min_image_size is not None and not 32 <= config.min_image_size <= config.image_size:
        raise ResnetError(f"--min-image-size must be in [32, --image-size {config.image_size}], "
                          f"got {config.min_image_size}")
    smallest = config.smallest_train_size()
    if 2 * config.crop_padding >= smallest:
        raise ResnetError(f"--crop-padding must be below half the smallest training crop ({smallest} px), "
                          f"got {config.crop_padding}")


def load_config(run_dir: Path) -> TrainConfig:
    """A run's saved config.json; an unreadable or invalid file is a one-line error naming it."""
    return TrainConfig.from_dict(read_config_values(Path(run_dir) / "config.json"))


def read_config_values(path: Path) -> dict[str, Any]:
    """The JSON object of a config.json as it is (keys beside the options included, such as
    ``resnet calibrate``'s temperature); an unreadable file is a one-line error naming it."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResnetError(f"{path} is not a readable config ({type(error).__name__}: {error})") from None
    if not isinstance(values, dict):
        raise ResnetError(f"{path} does not hold a config (a JSON object of options)")
    return values


# What may change when a run is resumed: how long it goes on, and where and how it runs,
# but nothing that changes what it computes on the way (so a resumed run still ends
# where an uninterrupted one with the same options does).
RESUMABLE = ("epochs", "eval_every", "quiet", "device", "workers", "compile", "cuda_graphs", "patience", "log")


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The saved config of a run, with the options that may change on resume applied.

    ``overrides`` holds every option (None: not given). Another option given with a new
    value is refused, naming it; the result is validated like a fresh config.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():  # without last.pt, it stopped before its first one: starts over
        raise ResnetError(f"{run_dir} is not a run directory (it has no config.json)")
    config = load_config(run_dir)
    known = {f.name for f in fields(TrainConfig)}
    for name, value in overrides.items():
        if value is None or name not in known:
            continue
        if name in RESUMABLE:
            setattr(config, name, value)
        elif value != getattr(config, name):
            raise ResnetError(f"{flag(name)} cannot change on resume (the run has {getattr(config, name)!r}); only "
                              f"{', '.join(flag(n) for n in RESUMABLE)} can. Start a new run to change it")
    try:
        validate(config)
    except ResnetError as error:
        raise ResnetError(f"resuming {run_dir}: {error}") from None
    return config
