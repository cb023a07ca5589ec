#!/usr/bin/env bash
# Training throughput on one CUDA GPU, the tutorial's pipeline against ours (`resnet bench`): end to
# end, model only (fp32 / bf16 / fp16 x NCHW / channels_last) and data only, for resnet34 and resnet50
# at 224 px, batch 256, on 2048 generated JPEGs at the tutorial's original size (500 px shorter side),
# so it runs offline. Under 8 minutes on an H100. Writes bench-gpu-<arch>-224.json and bench-gpu.md
# to $OUT when set (the device runner's output folder), else to benchmarks/results/.
# Usage: benchmarks/gpu_bench.sh   (env: NOTE=text stored with the results; BENCH_EXTRA="..." appended
# to each run, for smoke tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export RESNET_CACHE=${RESNET_CACHE:-${TMPDIR:-/tmp}/resnet-bench-cache}  # the generated JPEGs
out=${OUT:-benchmarks/results}
mkdir -p "$out"
"$py" -c "import torch, torchvision, numpy, PIL, tqdm, matplotlib
assert torch.cuda.is_available(), 'no CUDA GPU visible'
print('gpu:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true

workers=$(( $(nproc) < 16 ? $(nproc) : 16 ))
common="--device cuda --image-size 224 --batch-size 256 --steps 15 --warmup 2 --rounds 3 --images 2048 --generated-size 500 --workers $workers"
commands=()
files=()
for arch in resnet34 resnet50; do
    args="--arch $arch $common --out $out/bench-gpu-$arch-224.json"
    # shellcheck disable=SC2086  # the options are split on purpose
    "$py" -m resnet bench $args ${BENCH_EXTRA:-} ${NOTE:+--note "$NOTE"}
    commands+=("resnet bench $args${BENCH_EXTRA:+ $BENCH_EXTRA}")
    files+=("$out/bench-gpu-$arch-224.json")
    echo "gpu_bench.sh: $arch done after $((SECONDS - start)) s"
done

"$py" - "$out/bench-gpu.md" "${files[@]}" "benchmarks/gpu_bench.sh, which runs:" "${commands[@]}" <<'PY'
import json, sys
from pathlib import Path
from resnet.tools.bench import markdown_report
md, json_files, command = sys.argv[1], sys.argv[2:4], "\n".join(sys.argv[4:])
results = [json.loads(Path(f).read_text()) for f in json_files]
Path(md).write_text("# resnet bench on GPU\n\n" + markdown_report(results, command))
print(f"wrote {md}")
PY
echo "gpu_bench.sh: all done in $((SECONDS - start)) s"
