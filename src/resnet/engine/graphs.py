"""The training step as a CUDA graph (``--cuda-graphs``).

On a GPU a small image's step is bound by kernel launches, not by arithmetic: about 12 ms a step
whatever the batch was reported on an H200 at 32 px, and torch.compile's CUDA graphs
(mode='reduce-overhead') ran batch 128 2.6 times as fast. A CUDA graph records the step's kernels
once (forward, loss, backward, the GradScaler and the optimizer update) and replays them with one
launch. This is PyTorch's whole-network capture, as its CUDA semantics notes describe it:

- Warm-up: the first ``WARMUP_STEPS`` steps of a batch shape run eagerly on a side stream (cuDNN
  and cuBLAS choose their kernels, the optimizer and the scaler allocate their state). They are
  the run's own steps, on its own batches: nothing is stepped twice.
- Static tensors: each batch is copied into the images and targets the graph reads, and the
  loss is read from the tensor it writes. The capture itself runs nothing: the step it records
  is run by the first replay, so BatchNorm's running statistics and batch count are updated
  once a step, in place, as in an eager step.
- The learning rate: each parameter group's lr is a device tensor while the update is captured,
  so the fused optimizer reads it at every replay; before a replay it is filled from the group's
  float, which the schedule sets as it does for an eager step (checkpoints keep floats). AdamW is
  built with capturable=True (its step count on the device); SGD keeps no count.
- fp16: the GradScaler's dynamic loss scale, without a host sync. With a fused optimizer
  (``_step_supports_amp_scaling``) GradScaler.step hands the optimizer the scale and the inf flag
  as device tensors instead of reading them, and update() adjusts the scale on the device, so
  skipping a step with an inf gradient and backing off the scale happen inside the graph.
- Targets: when the run mixes (MixUp, CutMix) class indices become one-hot probabilities, so
  that mixed and unmixed batches have one shape; cross-entropy (with label smoothing and class
  weights) gives the same loss for either form.
- Shapes: a batch smaller than the captured one with the same crop (an epoch's last, partial
  batch) takes an eager step on the same model, optimizer and scaler, which both kinds of step
  update in place; nothing is dropped, so a graphed run steps through the batches an eager run
  does, and a run may resume with graphs on or off. A new crop size (progressive resizing)
  frees the graph and captures another after its own warm-up.
- A capture that fails is one warning line, and the run goes on with eager steps.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnet.config import TrainConfig
from resnet.engine.step import TrainStep
from resnet.errors import ResnetError
from resnet.util.distributed import Topology

# Eager steps of a shape before its capture: PyTorch's notes use three (DDP would need eleven).
WARMUP_STEPS = 3


def uses_cuda_graphs(config: TrainConfig, device: torch.device, topology: Topology = Topology()) -> bool:
    """Whether the run's step is a CUDA graph: ``auto`` on a CUDA device in one process without
    --compile, ``on`` there too, else eager; ``on`` where a graph cannot be is a one-line error."""
    if config.cuda_graphs == "off":
        return False
    why_not = None
    if device.type != "cuda":
        why_not = f"it needs a CUDA GPU, and this run is on {device.type}"
    elif topology.enabled:
        why_not = ("it is not supported under torchrun (DistributedDataParallel's gradient all-reduce needs a "
                   "capture of its own)")
    elif config.compile:
        why_not = "--compile compiles the step instead (torch.compile(mode='reduce-overhead') makes its own graphs)"
    if why_not is None:
        return True
    if config.cuda_graphs == "on":
        raise ResnetError(f"--cuda-graphs on: {why_not}; use --cuda-graphs auto or off")
    return False


class CudaGraph:
    """A function captured once as a CUDA graph, then replayed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph: torch.cuda.CUDAGraph | None = None

    def capture(self, body: Callable[[], Any]) -> Any:
        """Record ``body`` (running nothing) and return what it returned: the graph's outputs.
        thread_local: the data pipeline's prefetching thread may use CUDA meanwhile."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = body()
        self.graph = graph
        return out

    def replay(self) -> None:
        assert self.graph is not None
        self.graph.replay()

    def warmup(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        """An eager call on a side stream, as warm-up before a capture must be."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            out = body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out


class GraphedStep:
    """A ``TrainStep`` run as a CUDA graph for the batches of the captured shape (see the module's
    notes); called as the step is, with its ``model`` and ``optimizer``. ``num_classes``: set when
    the run mixes, so that class indices become one-hot targets. ``graph``: makes the recorder
    (``CudaGraph``; the tests give one that replays by calling the function again)."""

    def __init__(self, step: TrainStep, num_classes: int | None = None,
                 graph: Callable[[torch.device], CudaGraph] = CudaGraph) -> None:
        self.step, self.num_classes, self.make_graph = step, num_classes, graph
        self.side = graph(step.device)  # runs the warm-up steps
        self.shape: torch.Size | None = None  # the batch shape warmed up, then captured
        self.warmed = 0
        self.failed = False
        self.graph: CudaGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # images, targets, loss
        self.lrs: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        return self.step.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.eager(images, labels)
        shape = images.shape
        if self.graph is not None and shape == self.shape:
            return self.replay(images, labels)
        if self.shape is not None and shape[1:] == self.shape[1:] and shape[0] < self.shape[0]:
            return self.eager(images, labels)  # a partial batch: the graph stays
        if shape != self.shape:
            self.release()
            self.shape, self.warmed = shape, 0
        if self.warmed < WARMUP_STEPS:
            self.warmed += 1
            return self.side.warmup(lambda: self.eager(images, labels))
        return self.capture(images, labels)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The targets the graph reads: one-hot probabilities for a mixing run's class indices."""
        labels = labels.to(self.step.device, non_blocking=True)
        if self.num_classes is not None and not labels.is_floating_point():
            return F.one_hot(labels, self.num_classes).float()
        return labels

    def eager(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """An ordinary step on the same model, optimizer and scaler. A capturable AdamW's notice
        that it ran uncaptured is expected here, and not news to a user."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            return self.step(images, self.targets(labels))

    def capture(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Capture the step of this shape, then replay it for this batch; on failure, one warning
        and eager steps from then on (this batch's included)."""
        step = self.step
        static_images = torch.empty_like(images, device=step.device, memory_format=step.memory_format)
        static_targets = self.targets(labels).clone()
        self.lrs = [torch.tensor(float(group["lr"]), device=step.device) for group in step.optimizer.param_groups]
        graph = self.make_graph(step.device)
        step.optimizer.zero_grad(set_to_none=True)  # backward makes the grads in the graph's own memory
        try:
            loss = graph.capture(self.body(static_images, static_targets))
        except RuntimeError as error:  # torch's CUDA errors (AcceleratorError, OutOfMemoryError) included
            self.give_up(error)
            return self.eager(images, labels)
        self.graph, self.static = graph, (static_images, static_targets, loss)
        return self.replay(images, labels)

    def body(self, static_images: torch.Tensor, static_targets: torch.Tensor) -> Callable[[], torch.Tensor]:
        """The captured step: the update with the groups' lr as the device tensors ``replay`` fills,
        their floats put back after (the schedule, eager steps and checkpoints use floats)."""
        def run() -> torch.Tensor:
            groups = self.step.optimizer.param_groups
            floats = [group["lr"] for group in groups]
            try:
                for group, lr in zip(groups, self.lrs):
                    group["lr"] = lr
                return self.step.update(static_images, static_targets, cache=False)
            finally:
                for group, lr in zip(groups, floats):
                    group["lr"] = lr

        return run

    def replay(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self.graph is not None and self.static is not None
        static_images, static_targets, loss = self.static
        static_images.copy_(images, non_blocking=True)
        static_targets.copy_(self.targets(labels), non_blocking=True)
        for tensor, group in zip(self.lrs, self.step.optimizer.param_groups):
            tensor.fill_(group["lr"])
        self.graph.replay()
        return loss.clone()  # the next replay overwrites the graph's own

    def give_up(self, error: BaseException) -> None:
        """After a failed capture: nothing of it kept, and eager steps from now on."""
        self.release()
        self.failed = True
        self.step.optimizer.zero_grad(set_to_none=True)
        # A capture that failed inside GradScaler.step or update leaves the scaler's record of
        # this iteration half done, and its next step would refuse to run; the record is reset.
        if hasattr(self.step.scaler, "_per_optimizer_states"):
            self.step.scaler._per_optimizer_states = collections.defaultdict(
                torch.amp.grad_scaler._refresh_per_optimizer_state)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        warnings.warn(f"the CUDA graph capture of the training step failed ({first}); training on with eager "
                      "steps (--cuda-graphs off skips the attempt)", stacklevel=3)

    def release(self) -> None:
        """Free the graph and its tensors (a new crop size needs a new one)."""
        self.graph, self.static, self.lrs = None, None, []
