"""How close the training step comes to the machine's arithmetic rate, by model and size.

    PYTHONPATH=src python benchmarks/step_efficiency.py [--out FILE.json]

``resnet bench``'s model-only step (the shared ``TrainStep`` with the fused SGD update, one
fixed batch already in memory) for each case below, in alternating rounds (median), with
the training FLOPs per image counted from torchinfo's multiply-adds (forward; a backward
costs about two forwards, so a step is 3 x 2 x mult-adds per image). The ratio of two
cases' TFLOP/s says how much faster one could run at the other's efficiency: it bounds
``resnet bench``'s end-to-end ratio when the step is the bottleneck. Run it alone.
"""

from __future__ import annotations

import argparse
import json

import torch

from resnet.tools.bench import BenchOptions, Trainer, cpu_model, fixed_batch, median, timed
from resnet.util.hardware import select_precision
from resnet.tools.summary import model_facts

NUM_CLASSES = 102
# (arch, image size, batch, our precision? (else fp32), channels_last?)
CASES = [("resnet18", 112, 64, True, True), ("resnet18", 112, 64, False, False), ("resnet34", 224, 32, True, True)]


def training_flops(arch: str, size: int) -> float:
    """FLOPs of one image's training step: forward and backward, 3 x 2 x the forward's mult-adds."""
    return 6.0 * model_facts(arch, size, NUM_CLASSES).gmacs * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args()
    device = torch.device("cpu")
    ours = select_precision("auto", device)
    trainers, batches, speeds = {}, {}, {case: [] for case in CASES}
    for case in CASES:
        arch, size, batch, low_precision, channels_last = case
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        options = BenchOptions(arch=arch, image_size=size, batch_size=batch, steps=max(4, 640 // batch), warmup=3)
        trainers[case] = (Trainer(arch, NUM_CLASSES, device, ours if low_precision else None, memory_format, 0),
                          options)
        batches[case] = fixed_batch(options, NUM_CLASSES, device, memory_format)
    for r in range(args.rounds):
        for case in CASES:
            trainer, options = trainers[case]
            images, labels = batches[case]
            speeds[case].append(timed(lambda i: trainer.step(images, labels), options.warmup if r == 0 else 1,
                                      options.steps, device))
    rows = []
    for case in CASES:
        arch, size, batch, low_precision, channels_last = case
        images_per_s = median(speeds[case])
        flops = training_flops(arch, size)
        rows.append({"arch": arch, "image_size": size, "batch_size": batch,
                     "precision": str(ours).removeprefix("torch.") if low_precision else "fp32",
                     "memory_format": "channels_last" if channels_last else "contiguous",
                     "images_per_s": images_per_s, "rounds": speeds[case],
                     "training_gflop_per_image": flops / 1e9, "tflop_per_s": images_per_s * flops / 1e12})
    print("| arch | px | batch | precision | format | images/s | GFLOP/image | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['arch']} | {row['image_size']} | {row['batch_size']} | {row['precision']} | "
              f"{row['memory_format']} | {row['images_per_s']:.1f} | {row['training_gflop_per_image']:.2f} | "
              f"{row['tflop_per_s']:.3f} |")
    if args.out:
        result = {"cpu": cpu_model(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cases": rows}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
