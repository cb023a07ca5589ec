"""Training-step throughput by image size and batch size (resnet18, our precision, channels_last).

    PYTHONPATH=src python benchmarks/step_sizes.py [--sizes 64 80 96 112] [--batches 16 32]

What progressive resizing buys on this machine: ``resnet bench``'s model-only step (the
shared ``TrainStep`` on one fixed batch, 102 classes) at each size, after 5 warm-up steps,
for about as many images per size as 3000 at 64 px costs. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse

import torch

from resnet.tools.bench import BenchOptions, model_step_speeds
from resnet.util.hardware import select_precision


def images_per_second(batch_size: int, size: int, device: torch.device, dtype: torch.dtype | None) -> float:
    steps = max(10, int(3000 / batch_size * (64 / size) ** 2))
    options = BenchOptions(arch="resnet18", image_size=size, batch_size=batch_size, steps=steps, warmup=5, rounds=1)
    return model_step_speeds(options, 102, device, dtype, torch.channels_last)[0]


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
