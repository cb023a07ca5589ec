#!/bin/bash
# resnet check on CIFAR-10's training images and on all of Flowers-102, each twice (a fresh cache,
# then the kept per-file facts): the whole command timed, its JSON report kept under OUT.
# Run it with nothing else on the machine.
# Usage: benchmarks/check_timing.sh DATA_DIR   (DATA_DIR holds cifar-10/train/ and flowers-102/;
#   env: OUT=dir for the reports, default runs/check-timing)
# (The script runs from the repository root: a relative path is taken from there.)
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 DATA_DIR   (the folder holding cifar-10/train/ and flowers-102/)" >&2
    exit 2
fi
DATA=$1
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/check-timing}; mkdir -p "$OUT"
export RESNET_CACHE=$(mktemp -d --tmpdir check-cache-XXXX)
for target in "$DATA/cifar-10/train" "$DATA --dataset flowers102"; do
  for pass in cold warm; do
    name=$(echo "$target" | tr ' /.' '___')
    /usr/bin/time -f "%e s wall, %M KB max rss" .venv/bin/resnet check $target --json --quiet \
      --out "$OUT/$name-$pass" > "$OUT/$name-$pass.json" 2> "$OUT/$name-$pass.err"
    echo "$target $pass: exit $? $(tail -1 "$OUT/$name-$pass.err")"
  done
done
rm -rf "$RESNET_CACHE"
