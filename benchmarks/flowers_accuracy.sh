#!/usr/bin/env bash
# Flowers-102 from scratch, the tutorial's split (train on the 6149 "test" images, evaluate
# on the 1020 "train" images): resnet18 at 112 px for 40 epochs, the default recipe against
# the tutorial's (seed) recipe on the same budget. Results land in benchmarks/results/.
# The two runs share the machine, one thread each: two 2-thread runs on 2 cores thrash.
# Seconds per epoch of a run alone come from a run on an idle machine (see the README).
# Usage: benchmarks/flowers_accuracy.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
common=(--dataset flowers102 --data-dir "$data" --split seed --arch resnet18 --image-size 112 --epochs 40 --quiet)
OMP_NUM_THREADS=1 resnet train "${common[@]}" --recipe default --out benchmarks/results/flowers102-resnet18-112-default &
OMP_NUM_THREADS=1 resnet train "${common[@]}" --recipe seed --eval-image-size 112 --out benchmarks/results/flowers102-resnet18-112-seed &
wait
