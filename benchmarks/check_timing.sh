#!/bin/bash
# resnet check on CIFAR-10's training images and on all of Flowers-102, each twice (a fresh cache,
# then the kept per-file facts): the whole command timed, its JSON report kept under OUT.
# Run it with nothing else on the machine.
set -u
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}; OUT=${OUT:-/tmp/check-timing}; mkdir -p "$OUT"
export RESNET_CACHE=$(mktemp -d /tmp/check-cache-XXXX)
for target in "$DATA/cifar-10/train" "$DATA --dataset flowers102"; do
  for pass in cold warm; do
    name=$(echo "$target" | tr ' /.' '___')
    /usr/bin/time -f "%e s wall, %M KB max rss" .venv/bin/resnet check $target --json --quiet \
      --out "$OUT/$name-$pass" > "$OUT/$name-$pass.json" 2> "$OUT/$name-$pass.err"
    echo "$target $pass: exit $? $(tail -1 "$OUT/$name-$pass.err")"
  done
done
rm -rf "$RESNET_CACHE"
