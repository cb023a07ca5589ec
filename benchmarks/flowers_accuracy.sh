#!/usr/bin/env bash
# Flowers-102 from scratch, the tutorial's split (train on the 6149 "test" images, evaluate
# on the 1020 "train" images): resnet18 at 112 px for 40 epochs, the default recipe of the time, then
# the tutorial's recipe (--recipe tutorial) on the same budget. Each run has the machine to itself (on
# 2 cores, two concurrent 2-thread runs thrash). Results land in benchmarks/results/.
# Afterwards `python benchmarks/eval_sizes.py RUN_DIR` scores the checkpoints at other sizes, with and
# without flip TTA.
# Usage: benchmarks/flowers_accuracy.sh DATA_DIR   (the folder holding flowers-102/)
# (The script runs from the repository root: a relative path is taken from there.)
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 DATA_DIR   (the folder holding flowers-102/)" >&2
    exit 2
fi
data=$1
cd "$(dirname "$0")/.."
common=(--dataset flowers102 --data-dir "$data" --split tutorial --arch resnet18 --image-size 112 --epochs 40 --quiet)
# The default recipe of that table (before the time-to-accuracy work): batch 16, lr 0.025, one size, evaluated every epoch.
resnet train "${common[@]}" --recipe default --batch-size 16 --lr 0.025 --min-image-size 112 --eval-every 1 \
    --out runs/flowers102-resnet18-112-default
resnet train "${common[@]}" --recipe tutorial --eval-image-size 112 --out runs/flowers102-resnet18-112-tutorial
for run in default tutorial; do
    mkdir -p benchmarks/results/flowers102-resnet18-112-$run
    cp runs/flowers102-resnet18-112-$run/{config.json,metrics.csv,summary.json,curves.png} \
        benchmarks/results/flowers102-resnet18-112-$run/
done
