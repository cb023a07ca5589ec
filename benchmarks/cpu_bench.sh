#!/usr/bin/env bash
# Training throughput on this machine's CPU, the tutorial's pipeline against ours (`resnet bench`):
# end to end, model only and data only, for resnet34 at 224 px and resnet18 at 112 px, on generated
# JPEGs at the tutorial's original size (500 px on the shorter side). Writes
# benchmarks/results/bench-cpu-<arch>-<px>.json and benchmarks/results/bench-cpu.md.
# About 10-15 minutes on 2 cores. Run it on an otherwise idle machine: it refuses while a
# `resnet train` runs (FORCE=1 overrides; such figures are not comparable).
# Usage: benchmarks/cpu_bench.sh   (env: OUT=dir instead of benchmarks/results; NOTE=text stored with
# the results; BENCH_EXTRA="--steps 1 ..." appended to each run, for smoke tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
if pgrep -f "resnet train" >/dev/null && [ "${FORCE:-0}" != 1 ]; then
    echo "cpu_bench.sh: 'resnet train' is running; the figures would measure it too. Wait, or FORCE=1." >&2
    exit 1
fi
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export RESNET_CACHE=${RESNET_CACHE:-${TMPDIR:-/tmp}/resnet-bench-cache}  # the generated JPEGs
out=${OUT:-benchmarks/results}
mkdir -p "$out"

common="--device cpu --images 512 --generated-size 500 --workers 2 --rounds 3 --warmup 2"
runs=(
    "--arch resnet34 --image-size 224 --batch-size 32 --steps 5 $common --out $out/bench-cpu-resnet34-224.json"
    "--arch resnet18 --image-size 112 --batch-size 64 --steps 10 $common --out $out/bench-cpu-resnet18-112.json"
)
commands=()
for args in "${runs[@]}"; do
    # shellcheck disable=SC2086  # the options are split on purpose
    "$py" -m resnet bench $args ${BENCH_EXTRA:-} ${NOTE:+--note "$NOTE"}
    commands+=("resnet bench $args${BENCH_EXTRA:+ $BENCH_EXTRA}")
done

"$py" - "$out/bench-cpu.md" "$out/bench-cpu-resnet34-224.json" "$out/bench-cpu-resnet18-112.json" \
    "benchmarks/cpu_bench.sh, which runs:" "${commands[@]}" <<'PY'
import json, sys
from pathlib import Path
from resnet.tools.bench import markdown_report
md, json_files, command = sys.argv[1], sys.argv[2:4], "\n".join(sys.argv[4:])
results = [json.loads(Path(f).read_text()) for f in json_files]
Path(md).write_text("# resnet bench on CPU\n\n" + markdown_report(results, command))
print(f"wrote {md}")
PY
