"""Training-step speed at 32 px by network and stem: images/s of forward, backward and a fused
SGD step on random input, channels_last, fp32, after two warm-up steps.

    python benchmarks/stem_speed.py                       # batch 128, every variant
    python benchmarks/stem_speed.py --batch 256 --compile --only "resnet10 small-pool"
    python benchmarks/stem_speed.py --batch 256 --profile --only "resnet10 small-pool"

Variants beside the stems ``resnet.models.resnet`` has: resnet18 with a 3x3 stride-2 convolution and no
max-pool (another way to keep some down-sampling). ``--compile`` times the step after
``torch.compile`` (its compile time printed apart); ``--profile`` prints torch.profiler's table of
three steps by operator and input shape (where the time goes). Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from resnet.models.resnet import get_model

VARIANTS = ("resnet18 imagenet", "resnet18 small", "resnet18 3x3-stride-2", "resnet18 small-pool",
            "resnet10 small-pool", "resnet10 small")


def variant(name: str) -> nn.Module:
    arch, stem = name.split()
    if stem == "3x3-stride-2":
        model = get_model(arch, num_classes=10, stem="small")
        model.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        return model
    return get_model(arch, num_classes=10, stem=stem)


def images_per_second(model: nn.Module, batch: int, compile: bool, warmup: int = 2,
                      steps: int = 12) -> tuple[float, float]:
    """(images/s, seconds of the warm-up steps, which include any compilation)."""
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    begin = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start), start - begin


def profile_table(model: nn.Module, batch: int) -> str:
    from torch.profiler import profile

    images_per_second(model, batch, compile=False, warmup=1, steps=1)  # warm oneDNN's kernels
    with profile(record_shapes=True) as prof:
        images_per_second(model, batch, compile=False, warmup=0, steps=3)
    return prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--only", action="append", choices=VARIANTS, help="a variant to time (default: all)")
    p.add_argument("--profile", action="store_true", help="print the operators' times instead")
    args = p.parse_args()
    for name in args.only or VARIANTS:
        if args.profile:
            print(name, profile_table(variant(name), args.batch))
            continue
        speed, warmup = images_per_second(variant(name), args.batch, args.compile)
        print(f"{name}, batch {args.batch}{', compiled' if args.compile else ''}: {speed:.0f} images/s "
              f"(warm-up {warmup:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
