#!/usr/bin/env bash
# Float32 against int8 ONNX for a trained Flowers-102 run: resnet export --int8 writes both files,
# scores both on the run's evaluation images (the tutorial split's 1020), and prints their top-1,
# their top-1 agreement and the median onnxruntime latency of each at batch 1 and 32. Pinned to
# one core (taskset -c 1, one thread), as the machine of the recorded results allowed; the CPU, its
# vector extensions and the load before the run go at the top of the log.
# Usage: benchmarks/int8_export.sh RUN_DIR DATA_DIR
#   RUN_DIR:  a run with best.pt or last.pt (e.g. runs/flowers102-resnet18-112-default-v2, the
#             run of benchmarks/results/flowers102-resnet18-112-default-v2/, whose checkpoint is not kept there)
#   DATA_DIR: the folder holding flowers-102/
# The log lands in OUT (default runs/int8-export), with the two ONNX files.
# (The script runs from the repository root: a relative path is taken from there.)
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 RUN_DIR DATA_DIR   (a run with best.pt or last.pt; the folder holding flowers-102/)" >&2
    exit 2
fi
run=$1
data=$2
cd "$(dirname "$0")/.."
out=${OUT:-runs/int8-export}
mkdir -p "$out"
if [ ! -e "$run/best.pt" ] && [ ! -e "$run/last.pt" ]; then
    echo "no best.pt or last.pt in $run: train one first (benchmarks/time_to_accuracy.sh, or resnet train)" >&2
    exit 2
fi
command=(taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/resnet export "$run" --int8 --data-dir "$data"
         --calibration-images 256 --min-agreement 0.98 --out "$out/model.onnx")
{
    echo "command: ${command[*]}"
    echo "cpu: $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
    echo "vector extensions: $(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    status=0
    "${command[@]}" 2>&1 || status=$?
    echo "exit status: $status"
    exit "$status"  # 1: the int8 model agreed less often than --min-agreement (both files kept)
} | tee "$out/int8-export.log"
