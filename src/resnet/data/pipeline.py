"""The data path of a run, apart from the loop: decoded splits in, device batches out.

``load_run_data`` decodes a run's splits once (``resnet.data.cache``; the classic pipeline only
checks that each file decodes), leaves out the files that did not, and says so.
``FastTrainBatches`` turns index batches into augmented device batches: a background thread
gathers the next batches' rows from the memory-mapped cache (into pinned memory on CUDA)
while the current step runs, and the augmentation's random draws are made in the loop's
thread from ``(seed, epoch, step)``, so prefetching never changes what a run computes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from resnet.data import augment
from resnet.util import distributed
from resnet.data.augment import AugmentSpec, Normalize
from resnet.data.cache import DecodedImages, Share, decode, readable_parts
from resnet.config import TrainConfig
from resnet.data.sources import DataSplits, Source, warn_of_classes_without
from resnet.util.distributed import Topology, shard
from resnet.errors import ResnetError

PREFETCH_DEPTH = 2  # batches gathered ahead of the step


def augment_spec(config: TrainConfig) -> AugmentSpec:
    return AugmentSpec(rotation=config.rotation, scale=(config.min_scale, 1.0), hflip=config.hflip,
                       vflip=config.vflip, color_jitter=config.color_jitter, padding=config.crop_padding)


# --- decoding a run's splits -----------------------------------------------------------------


@dataclass
class RunData:
    """A run's splits, less their unreadable files, and (fast pipeline) their decoded caches."""

    splits: DataSplits
    train: DecodedImages | None = None
    eval: DecodedImages | None = None


def load_run_data(splits: DataSplits, config: TrainConfig, topology: Topology,
                  check_stop: Callable[[], None] | None = None) -> RunData:
    """Decode the training split (at the cache size, JPEGs in draft mode) and the evaluation
    split (at the evaluation size); the classic pipeline decodes them only to find which
    files it can read, once, remembered in the cache's index."""
    fast = config.pipeline == "fast"
    train = decode_for_run(splits.train, config.resolved_cache_size() if fast else 0, config, topology,
                           draft=True, check_stop=check_stop)
    evaluation = decode_for_run(splits.eval, config.resolved_eval_image_size() if fast else 0, config, topology,
                                check_stop=check_stop)
    [(train_source, train), (eval_source, evaluation)], bad = readable_parts(
        [(splits.train, train), (splits.eval, evaluation)], config.strict)
    if not len(train_source) or not len(eval_source):
        raise ResnetError("no readable images left for training and validation")
    if bad:  # which classes the unreadable files left empty
        warn_of_classes_without(splits.classes, train_source.labels, "no readable training image")
        warn_of_classes_without(splits.classes, eval_source.labels, "no readable validation image")
    kept = replace(splits, train=train_source, eval=eval_source, skipped=sorted(bad))
    return RunData(kept, train if fast else None, evaluation if fast else None)


def decode_for_run(source: Source, size: int, config: TrainConfig, topology: Topology, draft: bool = False,
                   check_stop: Callable[[], None] | None = None) -> DecodedImages:
    """Under torchrun the processes of each machine decode together into that machine's cache,
    each a share of the images it lacks (with its share of the CPUs): a cache on one machine's
    disk is of no use to another, so every machine decodes what it has not got."""
    share = Share(topology.local_rank, topology.local_world_size, lambda: distributed.barrier(topology))
    return decode(source, size, workers=config.workers, draft=draft, check_stop=check_stop,
                  progress=None if config.quiet else progress_prefix(topology),
                  share=share if topology.enabled else None)


def progress_prefix(topology: Topology) -> str:
    return f"resnet train (rank {topology.rank})" if topology.enabled else "resnet train"


# --- batches on the device ----------------------------------------------------------------------


class FastTrainBatches:
    """Batches from the decoded cache, augmented on the device as one warp per batch."""

    def __init__(self, data: DecodedImages, config: TrainConfig, device: torch.device) -> None:
        self.data, self.labels, self.device = data, data.labels, device
        # On a GPU the split's uint8 images live in device memory when they comfortably fit.
        nbytes = len(data) * data.images[0].numel() if len(data.images) else 0
        if device.type == "cuda" and nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]:
            self.data = DecodedImages(data.gather(torch.arange(len(data))).to(device), data.labels)
        self.spec = augment_spec(config)
        self.normalize = Normalize().to(device)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator, size: int,
                 topology: Topology = Topology()) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch, augmented into ``size`` px crops."""
        return self.augmented(batch, self.gathered(batch, topology), generator, size, topology)

    def epoch(self, batches: list[torch.Tensor], generators: Iterable[torch.Generator], size: int,
              topology: Topology = Topology()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented batches for ``batches``, each gathered in the background while the one before trains."""
        gathered = Prefetcher(batches, lambda batch: self.gathered(batch, topology))
        for batch, rows, generator in zip(batches, gathered, generators):
            yield self.augmented(batch, rows, generator, size, topology)

    def gathered(self, batch: torch.Tensor, topology: Topology) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's uint8 images and labels of a global batch: read from the cache (pinned
        for a non-blocking copy when the device is a GPU)."""
        indices = shard(batch, topology)
        images = self.data.gather(indices.to(self.data.images.device))
        if self.device.type == "cuda" and not images.is_cuda:
            images = images.pin_memory()
        return images, self.labels[indices]

    def augmented(self, batch: torch.Tensor, gathered: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator,
                  size: int, topology: Topology) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws are made for the whole global batch, so an image is augmented
        alike however many ranks share the batch."""
        params = shard(augment.sample_params(len(batch), self.spec, generator, size), topology)
        images, labels = gathered
        images = augment.apply_augment(images.to(self.device, non_blocking=True), params, size)
        return self.normalize(images), labels.to(self.device, non_blocking=True)


Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


class Prefetcher(Iterable[Loaded]):
    """``load(item)`` for each item in order, run ``depth`` items ahead in a background thread.
    An exception in ``load`` is raised where its result would have been; a consumer that
    stops early stops the thread."""

    def __init__(self, items: Iterable[Item], load: Callable[[Item], Loaded], depth: int = PREFETCH_DEPTH) -> None:
        self.items, self.load, self.depth = items, load, depth

    def __iter__(self) -> Iterator[Loaded]:
        results: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        done = object()

        def work() -> None:
            try:
                for item in self.items:
                    if stop.is_set():
                        return
                    results.put((self.load(item), None))
            except BaseException as error:  # handed to the consumer
                results.put((None, error))
            results.put((done, None))

        thread = threading.Thread(target=work, daemon=True, name="resnet-prefetch")
        thread.start()
        try:
            while True:
                value, error = results.get()
                if error is not None:
                    raise error
                if value is done:
                    return
                yield value
        finally:
            stop.set()
            while thread.is_alive():  # let a blocked put finish so the thread can see the stop
                try:
                    results.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.01)
