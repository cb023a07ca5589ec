"""Score checkpoints at several evaluation sizes, with and without flip TTA.

The images go through the training run's own evaluation path (decoded cache at each
size, normalization, channels_last, bf16 autocast where the CPU supports it). Prints a
markdown table of top-1 accuracy.

With ``--split official``, Flowers-102 runs on the tutorial's split are scored on the official
``val`` images instead, which that split neither trains on nor reports: a held-out set for
choosing the evaluation size.

Usage: python benchmarks/eval_sizes.py RUN_DIR [RUN_DIR ...] [--sizes 128,144,160,176] [--split official]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from resnet.data.sources import decode
from resnet.engine.scoring import classification_metrics, decoded_eval_batches, predict_logits
from resnet.tools.evaluation import eval_source, load_model_from_checkpoint
from resnet.util.hardware import select_precision
from resnet.models.resnet import FlipTTA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sizes", default="128,144,160,176")
    parser.add_argument("--split", default=None, help="score the 'eval' subset of this split (default: the run's)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    device = torch.device("cpu")
    dtype = select_precision("auto", device)
    print("| run | TTA | " + " | ".join(f"{s} px" for s in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for run in args.runs:
        model, checkpoint = load_model_from_checkpoint(run / "last.pt", tta=False)
        model = model.to(memory_format=torch.channels_last)
        source, *_ = eval_source(checkpoint, split=args.split)
        rows = {False: [], True: []}
        for size in sizes:
            data = decode(source, size, workers=1)
            for tta in (False, True):
                batches = decoded_eval_batches(data, 128, device)
                logits, labels = predict_logits(FlipTTA(model) if tta else model, batches, device, dtype)
                rows[tta].append(f"{100 * classification_metrics(logits, labels)['top1']:.2f}")
        for tta in (False, True):
            print(f"| {run.name} | {'flip' if tta else 'none'} | " + " | ".join(rows[tta]) + " |", flush=True)


if __name__ == "__main__":
    main()
