#!/usr/bin/env bash
# Time to accuracy on Flowers-102: one of its two benchmark commands, the whole command
# timed with a cold decode cache, then its outputs copied to benchmarks/results/<name>/ with
# output.txt (the CPU, the command, its epoch lines and `time`). Run it with the machine to
# itself: on 2 cores a second training (or the test suite) slows both by up to 4x.
# Usage: benchmarks/time_to_accuracy.sh fast|default NAME DATA_DIR [extra resnet train options]
#   fast:    resnet train --dataset flowers102 --arch resnet18 --image-size 112 --recipe fast
#   default: resnet train --dataset flowers102 --arch resnet18 --image-size 112
#   DATA_DIR: the folder holding flowers-102/
# (The script runs from the repository root: a relative path is taken from there.)
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 fast|default NAME DATA_DIR [extra resnet train options]   (DATA_DIR holds flowers-102/)" >&2
    exit 2
fi
recipe=$1 name=$2 data=$3
shift 3
cd "$(dirname "$0")/.."
resnet=${RESNET:-$([ -x .venv/bin/resnet ] && echo .venv/bin/resnet || echo resnet)}
cache=$(mktemp -d)  # cold: the decode is part of the time
trap 'rm -rf "$cache"' EXIT
run=runs/$name
results=benchmarks/results/$name
mkdir -p "$results"
command=("$resnet" train --dataset flowers102 --data-dir "$data" --arch resnet18 --image-size 112
         --recipe "$recipe" --out "$run" --quiet "$@")
{
    lscpu | grep 'Model name' || true
    date -u
    echo "command: ${command[*]}"
    time RESNET_CACHE=$cache "${command[@]}"
    date -u
} 2>&1 | tee "$results/output.txt"
cp "$run"/{config.json,metrics.csv,summary.json,curves.png} "$results/"
