"""Scoring a model: evaluation batches from either pipeline, the logits of every image
gathered from all ranks, and the classification metrics a run selects on."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resnet.data import augment
from resnet.util import distributed
from resnet.data.augment import Normalize
from resnet.data.cache import DecodedImages
from resnet.data.sources import Source, classic_loader
from resnet.util.distributed import Topology
from resnet.util.hardware import autocast


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def eval_batches(n: int, batch_size: int, topology: Topology = Topology()) -> list[torch.Tensor]:
    """Index batches over this rank's share of ``n`` images, in order."""
    indices = distributed.shard(torch.arange(n), topology)
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def decoded_eval_batches(data: DecodedImages, batch_size: int, device: torch.device,
                         topology: Topology = Topology(), normalize: Normalize | None = None) -> Iterator:
    """Normalized images and labels from the decoded cache (ImageNet statistics unless given)."""
    normalize = (normalize or Normalize()).to(device)
    for indices in eval_batches(len(data), batch_size, topology):
        yield normalize(data.gather(indices).to(device)), data.labels[indices]


def classic_eval_batches(source: Source, image_size: int, batch_size: int, workers: int | None,
                         topology: Topology = Topology()) -> Batches:
    """The tutorial's evaluation: Resize((s, s)) per image in DataLoader workers."""
    transform = augment.classic_eval_transform(image_size)
    return classic_loader(source, eval_batches(len(source), batch_size, topology), transform, workers, 0)


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Batches, device: torch.device, dtype: torch.dtype | None,
                   topology: Topology = Topology()) -> tuple[torch.Tensor, torch.Tensor]:
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


def top_k(num_classes: int) -> int:
    """The k of the "top-5" figures: 5, or every class when there are fewer."""
    return min(5, num_classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-k accuracy (k = ``top_k``; the key stays ``top5``),
    macro-F1 and balanced accuracy (``averaged_scores``)."""
    topk = logits.topk(top_k(logits.shape[1]), dim=1).indices
    confusion = confusion_matrix(topk[:, 0], labels, logits.shape[1])
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "top1": (topk[:, 0] == labels).float().mean().item(),
        "top5": (topk == labels[:, None]).any(1).float().mean().item(),
        **averaged_scores(confusion),
    }


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def class_scores(confusion: torch.Tensor) -> list[dict[str, float | None]]:
    """Per class: ``precision`` (of the images predicted as it, the share that are), ``recall``
    (of its images, the share predicted as it) and ``f1`` (their harmonic mean, 2 TP / (images +
    predicted)). None where undefined: precision of a class never predicted, recall of a class
    with no image, F1 of a class with neither. A class with images that is never predicted
    has recall 0 and F1 0."""
    scores = []
    for i in range(confusion.shape[0]):
        hits, images, predicted = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
        scores.append({"precision": hits / predicted if predicted else None,
                       "recall": hits / images if images else None,
                       "f1": 2 * hits / (images + predicted) if images + predicted else None})
    return scores


def averaged_scores(confusion: torch.Tensor) -> dict[str, float]:
    """``macro_f1`` and ``balanced_accuracy`` (the mean per-class recall), both unweighted means
    over the classes that have evaluation images. A class absent from the evaluated labels is
    left out of both (its recall is undefined), as scikit-learn's ``balanced_accuracy_score``
    does, and its ``f1_score(average="macro", labels=<the classes present>)``: predictions of
    such a class still count against the recall of the images' own classes. NaN without images."""
    present = [score for score, images in zip(class_scores(confusion), confusion.sum(1).tolist()) if images]
    if not present:
        return {"macro_f1": math.nan, "balanced_accuracy": math.nan}
    return {"macro_f1": sum(s["f1"] for s in present) / len(present),
            "balanced_accuracy": sum(s["recall"] for s in present) / len(present)}
