"""Training: the loop, read top to bottom.

A run is a directory: ``config.json``, ``metrics.csv``, ``curves.png``, ``last.pt``,
``best.pt`` and ``summary.json``. All randomness of an epoch is derived from
``(seed, epoch, step)``, and a checkpoint holds everything else that changes
(weights, optimizer, scaler, EMA, partial-epoch sums), so a resumed run continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from resnet import augment, distributed
from resnet.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentParams, AugmentSpec, Normalize
from resnet.checkpoint import load_checkpoint, save_atomic
from resnet.config import TrainConfig, load_config
from resnet.data import DataSplits, DecodedImages, Source, decode, load_splits
from resnet.distributed import Topology
from resnet.errors import ResnetError
from resnet.model import FlipTTA, ResNet, get_model
from resnet.plots import plot_curves

CHECKPOINT_FORMAT = 1
METRIC_COLUMNS = ("epoch", "train_loss", "eval_loss", "top1", "top5", "lr", "images_per_s", "seconds")


class TrainingDiverged(ResnetError):
    pass


# --- hardware -----------------------------------------------------------------


def select_device(name: str, topology: Topology = Topology()) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ResnetError("--device cuda: no CUDA GPU is available")
        return torch.device("cuda", topology.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ResnetError("--device mps: MPS is not available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). ``auto``: bf16 where the hardware computes it
    natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX), fp16 on older GPUs, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            name = "bf16" if cpu_supports_bf16() else "fp32"
        else:
            name = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# --- model and optimizer ----------------------------------------------------------


def build_model(config: TrainConfig, num_classes: int) -> ResNet:
    from resnet.weights import load_pretrained

    model = get_model(config.arch, num_classes=num_classes, zero_init_residual=config.zero_init_residual)
    if config.weights:
        load_pretrained(model, config.weights, config.arch)
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("fc."))
    return model


def is_head(parameter_name: str) -> bool:
    return parameter_name.startswith("fc.")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Backbone and head, each split for weight decay: decay on conv and linear weights
    only, since decaying BatchNorm scales and biases only fights the normalization."""
    groups = {(head, decays): [] for head in (False, True) for decays in (True, False)}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[(is_head(name), parameter.ndim > 1)].append(parameter)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "head": head}
            for (head, decays), params in groups.items() if params]


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        # AdamW's decay is decoupled (scaled by the lr, not by the gradient statistics).
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def group_learning_rate(config: TrainConfig, lr: float, head: bool, epoch: int) -> float:
    """fastai's fine_tune: with pretrained weights the head trains alone first, then the
    backbone joins at a lower learning rate, so a random head cannot wreck its features."""
    if head:
        return lr
    if epoch < config.resolved_head_epochs():
        return 0.0
    return lr * config.resolved_backbone_lr_scale()


def freeze_backbone_batchnorm(model: nn.Module) -> None:
    """A frozen backbone keeps its BatchNorm statistics too: eval mode for every BN outside the head."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head(name + "."):
            module.eval()


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warmup from ~0, then cosine to 0 (or constant), as a function of the global step."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    total = config.epochs * steps_per_epoch
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- randomness ------------------------------------------------------------------


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple such as (seed, epoch, step): the same numbers
    whether the run is fresh or resumed, on any device."""
    seed = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[torch.Tensor]:
    """The epoch's global batches: the same seeded permutation on every rank."""
    order = torch.randperm(n, generator=generator_for(seed, epoch, -1))
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    # A final batch too small to give every rank two images is dropped: BatchNorm cannot
    # normalize a single sample.
    if len(batches[-1]) < 2 * world_size:
        batches = batches[:-1] or batches
    return batches


Rows = TypeVar("Rows", torch.Tensor, AugmentParams)


def shard(rows: Rows, topology: Topology) -> Rows:
    """This rank's disjoint, strided share of a global batch (an index tensor, or the
    batch's augmentation draws)."""
    return rows[topology.rank::topology.world_size]


# --- data on the device ----------------------------------------------------------


class FastTrainBatches:
    """Batches from the decoded cache, augmented on the device as one warp per batch."""

    def __init__(self, data: DecodedImages, config: TrainConfig, device: torch.device) -> None:
        self.labels = data.labels
        # On a GPU the whole uint8 cache lives in device memory when it comfortably fits.
        fits = device.type == "cuda" and data.images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]
        self.images = data.images.to(device) if fits else data.images
        self.device = device
        self.size = config.image_size
        self.spec = augment_spec(config)
        self.normalize = Normalize().to(device)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator,
                 topology: Topology = Topology()) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch, augmented. The random draws are made for the
        whole global batch, so an image is augmented alike however many ranks share the batch."""
        params = shard(augment.sample_params(len(batch), self.spec, generator), topology)
        indices = shard(batch, topology)
        images = self.images[indices.to(self.images.device)].to(self.device, non_blocking=True)
        images = augment.apply_augment(images, params, self.size)
        return self.normalize(images), self.labels[indices].to(self.device, non_blocking=True)


def augment_spec(config: TrainConfig) -> AugmentSpec:
    return AugmentSpec(rotation=config.rotation, scale=(config.min_scale, 1.0), hflip=config.hflip,
                       vflip=config.vflip, color_jitter=config.color_jitter)


def classic_loader(source: Source, batches: list[torch.Tensor], transform, workers: int, seed: int) -> DataLoader:
    """The tutorial's pipeline: per-image PIL transforms in DataLoader workers."""
    dataset = copy.copy(source)
    dataset.transform = transform
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed))


def eval_batches(n: int, batch_size: int, topology: Topology = Topology()) -> list[torch.Tensor]:
    indices = shard(torch.arange(n), topology)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def decode_for_run(source: Source, size: int, config: TrainConfig, topology: Topology) -> DecodedImages:
    """Rank 0 decodes (or finds the cache file); the other ranks then memory-map its result."""
    if not topology.is_main:
        distributed.barrier(topology)
    data = decode(source, size, workers=config.workers)
    if topology.is_main:
        distributed.barrier(topology)
    return data


# --- evaluation ------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                   dtype: torch.dtype | None, topology: Topology = Topology()) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and labels for every image, gathered from all ranks."""
    model.eval()
    logits, labels = [], []
    for images, targets in batches:
        with autocast(device, dtype):
            out = model(images.to(device, non_blocking=True))
        logits.append(out.float().cpu())
        labels.append(targets.cpu())
    local = (torch.cat(logits) if logits else torch.empty(0), torch.cat(labels) if labels else torch.empty(0))
    gathered = distributed.all_gather_objects(local, topology)
    return torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]).long()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "top1": (topk[:, 0] == labels).float().mean().item(),
        "top5": (topk == labels[:, None]).any(1).float().mean().item(),
    }


def decoded_eval_batches(data: DecodedImages, batch_size: int, device: torch.device,
                         topology: Topology = Topology()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    normalize = Normalize().to(device)
    for indices in eval_batches(len(data), batch_size, topology):
        yield normalize(data.images[indices].to(device)), data.labels[indices]


def classic_eval_batches(source: Source, image_size: int, batch_size: int, workers: int,
                         topology: Topology = Topology()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    transform = augment.classic_eval_transform(image_size)
    yield from classic_loader(source, eval_batches(len(source), batch_size, topology), transform, workers, 0)


# --- the run directory -------------------------------------------------------------------


def new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        path = Path(config.out)
        if path.exists() and any(path.iterdir()):
            raise ResnetError(f"{path} already exists and is not empty; continue it with --resume {path} "
                              "or choose another --out")
    else:
        path = Path("runs") / f"{config.dataset}-{config.arch}-{datetime.now():%Y%m%d-%H%M%S}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_metrics_csv(history: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


# --- Ctrl-C --------------------------------------------------------------------------


class StopRequest:
    """The first Ctrl-C asks the loop to stop after the current step and save; a second one
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def stop_requested(stop: StopRequest, topology: Topology, step: int) -> bool:
    """Whether any rank saw Ctrl-C. Across processes this is a collective, so ranks agree
    only every tenth step; a single process checks every step."""
    if not topology.enabled:
        return stop.requested
    if step % 10:
        return False
    return any(distributed.all_gather_objects(stop.requested, topology))


class Interrupted(Exception):
    def __init__(self, run_dir: Path, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step}; checkpoint saved. "
                         f"Continue with: resnet train --resume {run_dir}")


# --- the loop ----------------------------------------------------------------------------


@dataclass
class RunState:
    """Everything besides the modules that a checkpoint must hold to resume exactly."""

    epoch: int = 0  # the epoch in progress (or the next one, when step == 0)
    step: int = 0  # the next step within that epoch
    loss_sum: float = 0.0  # sum of per-image training loss so far in this epoch
    images_seen: int = 0
    best_top1: float = -1.0
    history: list | None = None


def train(config: TrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train as the config says; returns the run summary (also written to summary.json)."""
    topology = distributed.init_distributed(select_device(config.device).type)
    try:
        return _train(config, resume, topology)
    finally:
        distributed.shutdown(topology)


def _train(config: TrainConfig, resume: Path | None, topology: Topology) -> dict[str, Any]:
    device = select_device(config.device, topology)
    dtype = select_precision(config.precision, device)
    if config.batch_size % topology.world_size:
        raise ResnetError(f"--batch-size {config.batch_size} must be divisible by the {topology.world_size} processes")
    main = topology.is_main
    log = print if main else (lambda *a, **k: None)

    run_dir = resume if resume else (new_run_dir(config) if main else None)
    run_dir = Path(distributed.all_gather_objects(str(run_dir), topology)[0])

    splits = load_splits(config.dataset, config.data_dir, config.split, config.val_fraction, config.seed,
                         config.strict)
    num_classes = len(splits.classes)
    torch.manual_seed(config.seed)  # the initial weights
    model = build_model(config, num_classes)
    if config.sync_bn and topology.enabled:
        if device.type != "cuda":
            raise ResnetError("--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU kernel")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = None
    if config.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)

    state = RunState(history=[])
    if resume:
        state = restore(resume / "last.pt", model, optimizer, scaler, ema)
        log(f"resuming {resume} at epoch {state.epoch + 1}, step {state.step}")
    elif main:
        write_text_atomic(run_dir / "config.json", config.to_json())

    train_model: nn.Module = model
    if topology.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    eval_model: nn.Module = ema.module if ema is not None else model
    if config.tta:
        eval_model = FlipTTA(eval_model)

    eval_size = config.resolved_eval_image_size()
    eval_data = None
    if config.pipeline == "fast":
        train_data = decode_for_run(splits.train, config.resolved_cache_size(), config, topology)
        fast_batches = FastTrainBatches(train_data, config, device)
        eval_data = decode_for_run(splits.eval, eval_size, config, topology)
    n_train = len(splits.train)
    steps_per_epoch = len(epoch_batches(n_train, config.batch_size, config.seed, 0, topology.world_size))
    log(f"run {run_dir}: {config.arch} on {config.dataset} ({n_train} training / {len(splits.eval)} "
        f"evaluation images ('{splits.eval_name}'), {num_classes} classes), {device.type} "
        f"{'fp32' if dtype is None else str(dtype).removeprefix('torch.')}, {config.pipeline} pipeline")

    def evaluate_now(source: Source, data: DecodedImages | None) -> dict[str, float]:
        batch = max(1, config.batch_size // topology.world_size)
        if data is not None:
            batches = decoded_eval_batches(data, batch, device, topology)
        else:
            batches = classic_eval_batches(source, eval_size, batch, config.workers, topology)
        return classification_metrics(*predict_logits(eval_model, batches, device, dtype, topology))

    def checkpoint(path_name: str) -> None:
        if main:
            save_atomic(checkpoint_dict(config, model, optimizer, scaler, ema, state, splits), run_dir / path_name)

    started = time.perf_counter()
    with StopRequest() as stop:
        while state.epoch < config.epochs:
            epoch = state.epoch
            batches = epoch_batches(n_train, config.batch_size, config.seed, epoch, topology.world_size)
            if config.pipeline == "fast":
                step_inputs = ((i, lambda i=i: fast_batches(batches[i], generator_for(config.seed, epoch, i), topology))
                               for i in range(state.step, len(batches)))
            else:
                local = [shard(b, topology) for b in batches[state.step:]]
                loader = classic_loader(splits.train, local, augment.classic_train_transform(
                    augment_spec(config), config.image_size), config.workers, config.seed * 1000 + epoch)
                step_inputs = ((state.step + j, lambda b=b: b) for j, b in enumerate(loader))

            train_model.train()
            if config.freeze_backbone:
                freeze_backbone_batchnorm(model)
            epoch_start = time.perf_counter()
            images_at_start = state.images_seen
            loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
            bar = tqdm(total=len(batches), initial=state.step, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not main or config.quiet, leave=False, file=sys.stderr, dynamic_ncols=True)
            for step, get_batch in step_inputs:
                images, labels = get_batch()
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                lr = learning_rate(config, epoch * steps_per_epoch + step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = group_learning_rate(config, lr, group["head"], epoch)
                with autocast(device, dtype):
                    loss = F.cross_entropy(train_model(images), labels, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.detach().double() * len(labels)
                state.images_seen += len(labels)
                state.step = step + 1
                if step % 10 == 0 or state.step == len(batches):
                    current = loss.item()
                    if not math.isfinite(current):
                        raise TrainingDiverged(
                            f"the training loss became {current} at epoch {epoch + 1}, step {step}; stopped. "
                            f"Last good checkpoint: {run_dir / 'last.pt'} (try a lower --lr)")
                    seconds = time.perf_counter() - epoch_start
                    bar.set_postfix(loss=f"{current:.3f}", img_s=f"{(state.images_seen - images_at_start) / seconds:.0f}")
                bar.update(1)
                if stop_requested(stop, topology, step):
                    state.loss_sum = loss_sum.item()
                    checkpoint("last.pt")
                    bar.close()
                    raise Interrupted(run_dir, epoch, state.step)
            bar.close()
            train_seconds = time.perf_counter() - epoch_start
            lr = learning_rate(config, (epoch + 1) * steps_per_epoch - 1, steps_per_epoch)

            global_loss = distributed.all_reduce_sum(
                torch.tensor([loss_sum.item(), state.images_seen], dtype=torch.float64, device=device), topology)
            metrics = evaluate_now(splits.eval, eval_data)
            row = {
                "epoch": epoch + 1,
                "train_loss": global_loss[0].item() / global_loss[1].item(),
                "eval_loss": metrics["loss"],
                "top1": metrics["top1"],
                "top5": metrics["top5"],
                "lr": lr,
                "images_per_s": (global_loss[1].item() - images_at_start * topology.world_size) / train_seconds,
                "seconds": time.perf_counter() - epoch_start,
            }
            state.history.append(row)
            state.epoch, state.step, state.loss_sum, state.images_seen = epoch + 1, 0, 0.0, 0
            improved = row["top1"] > state.best_top1
            state.best_top1 = max(state.best_top1, row["top1"])
            checkpoint("last.pt")
            if improved:
                checkpoint("best.pt")
            if main:
                write_metrics_csv(state.history, run_dir / "metrics.csv")
                plot_curves(state.history, run_dir / "curves.png", f"{config.arch} on {config.dataset}")
                tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs}  train loss {row['train_loss']:.4f}  "
                           f"eval loss {row['eval_loss']:.4f}  top-1 {100 * row['top1']:5.2f}%  "
                           f"top-5 {100 * row['top5']:5.2f}%  lr {lr:.4g}  {row['images_per_s']:.0f} img/s  "
                           f"{row['seconds']:.1f}s", file=sys.stdout)

    summary = {
        "run_dir": str(run_dir),
        "arch": config.arch,
        "dataset": config.dataset,
        "split": config.split,
        "train_images": n_train,
        "eval_images": len(splits.eval),
        "eval_split": splits.eval_name,
        "num_classes": num_classes,
        "epochs": len(state.history),
        "final_top1": state.history[-1]["top1"],
        "final_top5": state.history[-1]["top5"],
        "best_top1": state.best_top1,
        "best_epoch": 1 + max(range(len(state.history)), key=lambda i: state.history[i]["top1"]),
        "seconds": sum(row["seconds"] for row in state.history),
        "seconds_this_session": time.perf_counter() - started,
        "skipped_files": splits.skipped,
    }
    if splits.test is not None:
        # The official protocol: the weights chosen on val are scored once on test.
        best = load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(best["ema"] if ema is not None and best.get("ema") else best["model"])
        if ema is not None:
            ema.module.load_state_dict(best["ema"] or best["model"])
        test_data = decode_for_run(splits.test, eval_size, config, topology) if config.pipeline == "fast" else None
        test = evaluate_now(splits.test, test_data)
        summary.update(test_images=len(splits.test), test_top1=test["top1"], test_top5=test["top5"])
    if main:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
        log(f"done: final top-1 {100 * summary['final_top1']:.2f}% (best {100 * summary['best_top1']:.2f}% "
            f"at epoch {summary['best_epoch']})" + (f", test top-1 {100 * summary['test_top1']:.2f}%"
                                                    if "test_top1" in summary else "") + f"; outputs in {run_dir}")
    return summary


def checkpoint_dict(config: TrainConfig, model: nn.Module, optimizer, scaler, ema, state: RunState,
                    splits: DataSplits) -> dict[str, Any]:
    """Plain data only (tensors, numbers, strings, lists, dicts): loadable with weights_only=True."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": config.arch,
        "config": asdict(config),
        "classes": list(splits.classes),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "image_size": config.resolved_eval_image_size()},
        "model": unwrap(model).state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.n_averaged) if ema is not None else 0,  # the average restarts at 0
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
    }


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def restore(path: Path, model: nn.Module, optimizer, scaler, ema) -> RunState:
    checkpoint = load_checkpoint(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    if ema is not None and checkpoint.get("ema") is not None:
        ema.module.load_state_dict(checkpoint["ema"])
        ema.n_averaged.fill_(checkpoint["ema_updates"])
    return RunState(**checkpoint["state"])


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The saved config of a run, with the few options that may change on resume."""
    if not (run_dir / "config.json").exists() or not (run_dir / "last.pt").exists():
        raise ResnetError(f"{run_dir} is not a run directory with a checkpoint (config.json and last.pt)")
    config = load_config(run_dir)
    for key in ("epochs", "quiet", "device", "workers"):
        if overrides.get(key) is not None:
            setattr(config, key, overrides[key])
    return config
