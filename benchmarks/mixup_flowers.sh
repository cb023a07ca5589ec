#!/usr/bin/env bash
# MixUp and CutMix against the default recipe on Flowers-102 (the tutorial's split, resnet18 from
# scratch at 112 px, 64 epochs): four runs of the same command, the recipe alone, with --mixup 0.2,
# with --cutmix 1.0, and with both (--mix-switch 0.5: half of the mixed batches each), everything
# else the default. Each run goes through benchmarks/time_to_accuracy.sh: timed whole with a cold
# decode cache, its outputs copied to benchmarks/results/<name>/ with output.txt (the CPU, the
# command, its epoch lines and `time`). The recipe alone is run again rather than taken from
# flowers102-resnet18-112-default-v2, so that all four share one version of the code and of the
# evaluation size. About 45 minutes a run on 2 CPU cores, 3 hours in all; give the runs the machine
# to themselves. A table of the four summaries is printed at the end.
# Usage: benchmarks/mixup_flowers.sh DATA_DIR   (the folder holding flowers-102/)
# (The script runs from the repository root: a relative path is taken from there.)
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 DATA_DIR   (the folder holding flowers-102/)" >&2
    exit 2
fi
data=$1
cd "$(dirname "$0")/.."
prefix=flowers102-resnet18-112-default
declare -A options=(
    [none]=""
    [mixup0.2]="--mixup 0.2"
    [cutmix1.0]="--cutmix 1.0"
    [mixup0.2-cutmix1.0]="--mixup 0.2 --cutmix 1.0 --mix-switch 0.5"
)
names=(none mixup0.2 cutmix1.0 mixup0.2-cutmix1.0)
for name in "${names[@]}"; do
    # shellcheck disable=SC2086  # the options are words
    benchmarks/time_to_accuracy.sh default "$prefix-$name" "$data" ${options[$name]}
done
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
"$python" - "$prefix" "${names[@]}" <<'EOF'
import json, sys
prefix, names = sys.argv[1], sys.argv[2:]
print("| mixing | final top-1 | best top-1 (epoch) | minutes |")
print("|---|---|---|---|")
for name in names:
    s = json.load(open(f"benchmarks/results/{prefix}-{name}/summary.json"))
    print(f"| {name} | {100 * s['final_top1']:.2f}% | {100 * s['best_top1']:.2f}% ({s['best_epoch']}) "
          f"| {s['seconds'] / 60:.1f} |")
EOF
