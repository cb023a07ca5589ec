#!/usr/bin/env bash
# The GPU check: one script for one CUDA GPU machine, at most 9 minutes, offline.
#
#   benchmarks/gpu_check.sh                       # on the GPU machine, from the repository root
#   GPU_CHECK_TINY=1 benchmarks/gpu_check.sh      # every stage shrunk: tries the script on a CPU
#
# Stages, each capped with `timeout` (30, 150, 100, 60, 180 and 60 s) and within a 9-minute budget for
# the whole (a stage that would not fit is skipped with a line saying so; a failed stage does not stop
# the others; a CIFAR-10 run stopped at its cap keeps its finished epochs' files):
#   1. the environment (torch, the GPU);
#   2. the GPU tests: python -m pytest -m gpu -q (tests/test_gpu.py);
#   3. resnet bench, resnet34 at 224 px, batch 256: the model-only step eager against CUDA graphs and
#      fp16 against bf16, our pipeline against the tutorial's;
#   4. CIFAR-10's plain command (resnet train --dataset imagefolder --data-dir DIR) on the
#      45,000 / 5,000 hold-out of benchmarks/cifar10.py;
#   5. airbench94 on the same images (benchmarks/airbench_cifar10.py).
# The data and packages travel in .gpu-data/ (ignored by git; benchmarks/pack_gpu_data.sh makes it):
# cifar10-train.tar.gz (CIFAR-10's training images as cifar-10/train/<class>/), airbench-0.1.8.tar.gz
# (the sdist from the package index; without it stage 5 is skipped with a line) and wheels/ (pytest,
# installed offline only when the machine lacks it). The project runs from the tree, with
# PYTHONPATH=$PWD/src (no install). Results are written as they come into
# benchmarks/results/gpu-DATE/ (runs/gpu-check-tiny-DATE/ with GPU_CHECK_TINY=1), the key lines are
# printed last, and with $OUT set the folder is packed into $OUT/gpu-DATE.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
budget=${GPU_CHECK_SECONDS:-540}  # 9 minutes
reserve=15                        # for the summary and the tarball
tiny=${GPU_CHECK_TINY:-0}
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
day=$(date +%F)
if [ "$tiny" = 1 ]; then results=runs/gpu-check-tiny-$day; else results=benchmarks/results/gpu-$day; fi
work=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/resnet-gpu-check}
export RESNET_CACHE="$work/cache"
mkdir -p "$results" "$work"
summary=$results/summary.txt
: > "$summary"
workers=$(( $(nproc) < 16 ? $(nproc) : 16 ))

say() { echo "gpu_check: $*" | tee -a "$summary"; }
left() { echo $(( budget - reserve - (SECONDS - start) )); }

# stage NAME CAP COMMAND...: COMMAND under `timeout` (CAP seconds, or what is left of the budget),
# its output in RESULTS/NAME.log; one line in the summary either way.
stage() {
    local name=$1 cap=$2 t0=$SECONDS limit rc
    shift 2
    limit=$(left)
    [ "$cap" -lt "$limit" ] && limit=$cap
    if [ "$limit" -lt 20 ]; then
        say "$name: skipped, $(left) s of the budget left"
        return 99
    fi
    timeout --kill-after=10 "$limit" "$@" > "$results/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "$name: stopped at its limit of $limit s (see $name.log)"
    else
        say "$name: exit status $rc in $((SECONDS - t0)) s (limit $limit s)"
    fi
    return "$rc"
}

say "started $(date -u +%FT%TZ) in $results (tiny: $tiny)"

# 1. The environment.
stage environment 30 "$py" -c "
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda)
print('gpu:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')
for name in ('torchvision', 'numpy', 'PIL', 'tqdm', 'matplotlib', 'scipy', 'pytest', 'onnx', 'onnxruntime',
             'captum', 'gradio', 'torchinfo'):
    try:
        module = __import__(name)
        print(name, getattr(module, '__version__', '?'))
    except ImportError:
        print(name, 'absent')
"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$results/environment.log" 2>&1 || true

# 2. The GPU tests; pytest from the carried wheels when the machine lacks it.
if ! "$py" -c "import pytest" 2>/dev/null && [ -d .gpu-data/wheels ]; then
    stage install-pytest 60 "$py" -m pip install --no-index --find-links .gpu-data/wheels pytest
fi
if [ "$tiny" = 1 ]; then  # without a GPU every test is skipped: this checks the collection and the stage
    stage gpu-tests 120 "$py" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
else  # the modules of extras that are absent fail to collect; the gpu tests still run
    stage gpu-tests 150 "$py" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors
fi

# 3. resnet bench.
if [ "$tiny" = 1 ]; then
    bench=(--device cpu --arch resnet10 --image-size 64 --batch-size 8 --steps 1 --warmup 1 --rounds 1 --images 16
           --generated-size 80 --workers 2 --out "$results/bench-resnet10-64-cpu.json")
else
    bench=(--device cuda --arch resnet34 --image-size 224 --batch-size 256 --steps 10 --warmup 2 --rounds 3
           --images 512 --workers "$workers" --out "$results/bench-resnet34-224.json")
fi
stage bench 100 "$py" -m resnet bench "${bench[@]}"

# 4 and 5. CIFAR-10: the plain command, then airbench94 on the same hold-out.
data_tar=.gpu-data/cifar10-train.tar.gz
if [ -f "$data_tar" ]; then
    stage unpack-cifar10 60 tar -xzf "$data_tar" -C "$work"
    if [ "$tiny" = 1 ]; then cifar=(--quick --args "--epochs 1 --device cpu --workers 2"); set_dir=quick
    else cifar=(--args ""); set_dir=full; fi  # the plain command: no option
    stage cifar10-plain 180 "$py" benchmarks/cifar10.py --source "$work/cifar-10/train" --work "$work/cifar10" \
        --name plain-gpu --results "$results" "${cifar[@]}"
    # A run stopped at its limit keeps its finished epochs: their files are kept too.
    run_dir=$work/cifar10/$set_dir/runs/plain-gpu
    mkdir -p "$results/cifar10-plain-gpu"
    for f in config.json metrics.csv summary.json; do
        [ -f "$run_dir/$f" ] && cp "$run_dir/$f" "$results/cifar10-plain-gpu/"
    done
    [ -f "$run_dir.log" ] && cp "$run_dir.log" "$results/cifar10-plain-gpu/train.log"
    airbench_sdist=$(ls .gpu-data/airbench-0.1.8.tar.gz 2>/dev/null)
    if [ -n "$airbench_sdist" ]; then
        tar -xzf "$airbench_sdist" -C "$work"
        stage airbench94 60 "$py" benchmarks/airbench_cifar10.py --data "$work/cifar10/$set_dir/data" \
            --work "$work/airbench" --airbench "$work/airbench-0.1.8" --out "$results/airbench94.json" \
            --workers "$workers"
    else
        say "airbench94: skipped, .gpu-data/airbench-0.1.8.tar.gz is absent (benchmarks/pack_gpu_data.sh fetches it)"
    fi
else
    say "cifar10-plain and airbench94: skipped, $data_tar is absent (benchmarks/pack_gpu_data.sh DIR makes it)"
fi

# The key lines, last.
{
    echo "--- key lines ---"
    tail -n 1 "$results/gpu-tests.log" 2>/dev/null | sed 's/^/gpu tests: /'
    awk '/^end-to-end/ {part = "end to end"} /^model only/ {part = "model only"} /^data pipeline/ {part = "data only"}
         /as a CUDA graph|fp16 \/ bf16|ours \/ tutorial|^  (fp32|bf16|fp16) / {sub(/^ +/, ""); print "bench, " part ": " $0}' \
        "$results/bench.log" 2>/dev/null
    "$py" - "$results" <<'PY'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
for path in sorted(results.glob("cifar10-plain-gpu/summary.json")):
    s = json.loads(path.read_text())
    print(f"cifar10 plain: final top-1 {100 * s['final_top1']:.2f}% after {s['epochs']} epochs, "
          f"{s['seconds']:.0f} s of epochs ({s['arch']}, {s['train_images']} training images)")
for path in results.glob("cifar10-plain-gpu/result.json"):
    r = json.loads(path.read_text())
    print(f"cifar10 plain: {r['wall_seconds']} s wall for the whole command (exit status {r['exit_status']})")
if not list(results.glob("cifar10-plain-gpu/summary.json")):
    rows = list((results / "cifar10-plain-gpu").glob("metrics.csv"))
    if rows:
        lines = rows[0].read_text().splitlines()
        print(f"cifar10 plain: did not finish; {len(lines) - 1} epochs in metrics.csv")
airbench = results / "airbench94.json"
if airbench.exists():
    a = json.loads(airbench.read_text())
    if "skipped" in a:
        print(f"airbench94: {a['skipped']}")
    else:
        print(f"airbench94: top-1 {100 * a['top1_tta2']:.2f}% (TTA level 2; {100 * a['top1_no_tta']:.2f}% without) "
              f"in {a['wall_seconds_with_its_evaluations']} s with its per-epoch evaluations, on {a['images']}")
PY
    echo "all stages in $((SECONDS - start)) s; results in $results"
} 2>&1 | tee -a "$summary"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar -czf "$OUT/gpu-$day.tar.gz" -C "$(dirname "$results")" "$(basename "$results")" \
        && echo "gpu_check: packed $OUT/gpu-$day.tar.gz"
fi
