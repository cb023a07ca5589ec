"""Training-step speed of resnet18 at 32 px with each stem: images/s of forward, backward and a
fused SGD step on random input, batch 128, channels_last, fp32, after two warm-up steps.

    python benchmarks/stem_speed.py

Variants beside the two stems ``resnet.model`` has: a 3x3 stride-2 convolution, and the small
stem followed by a stride-2 max-pool (each keeps some down-sampling, for a cheaper step).
Run it with nothing else on the machine.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from resnet.model import resnet18

VARIANTS = ("imagenet (7x7 stride 2, max-pool)", "small (3x3 stride 1)", "3x3 stride 2",
            "3x3 stride 1 + max-pool")


def variant(name: str) -> nn.Module:
    model = resnet18(num_classes=10, stem="imagenet" if name.startswith("imagenet") else "small")
    if name == "3x3 stride 2":
        model.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
    elif name == "3x3 stride 1 + max-pool":
        model.maxpool = nn.MaxPool2d(3, 2, 1)
    return model


def images_per_second(model: nn.Module, batch: int = 128, warmup: int = 2, steps: int = 3) -> float:
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


if __name__ == "__main__":
    for name in VARIANTS:
        print(f"{name}: {images_per_second(variant(name)):.0f} images/s")
