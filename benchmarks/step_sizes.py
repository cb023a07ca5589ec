"""Training-step throughput of resnet18 by image size and batch size (bf16, channels_last).

    PYTHONPATH=src python benchmarks/step_sizes.py [--sizes 64 80 96 112] [--batches 16 32]

What progressive resizing buys on this machine: the step alone (the shared ``TrainStep``,
random input, 102 classes), after 5 warm-up steps, for about as many images per size as
3000 at 64 px costs. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from resnet.hardware import select_precision
from resnet.model import get_model
from resnet.train import TrainStep


def images_per_second(batch_size: int, size: int, device: torch.device, dtype: torch.dtype | None) -> float:
    torch.manual_seed(0)
    model = get_model("resnet18", num_classes=102).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = TrainStep(model, optimizer, device, dtype, torch.channels_last, label_smoothing=0.1)
    images, labels = torch.randn(batch_size, 3, size, size), torch.randint(0, 102, (batch_size,))
    for _ in range(5):
        step(images, labels)
    steps = max(10, int(3000 / batch_size * (64 / size) ** 2))
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 80, 96, 112])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args()
    device = torch.device("cpu")
    dtype = select_precision("auto", device)
    print("| batch | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
    print("|---|" + "---|" * len(args.sizes))
    for batch_size in args.batches:
        speeds = [images_per_second(batch_size, size, device, dtype) for size in args.sizes]
        print(f"| {batch_size} | " + " | ".join(f"{v:.0f}" for v in speeds) + " |", flush=True)


if __name__ == "__main__":
    main()
