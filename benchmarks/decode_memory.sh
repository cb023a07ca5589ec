#!/bin/bash
# The anonymous memory of the decode alone: the training split of a generated folder
# (python benchmarks/scale.py makes them) decoded into a fresh cache at 128 px, 2 workers,
# inside a cgroup-v1 memory group; the peak over the whole process tree, and the peak while no
# decode worker is alive (the Python process with torch imported and the files listed). Run as root, alone.
# Usage: benchmarks/decode_memory.sh DIR   (a folder scale.py made, e.g. ROOT/n10000)
# (The script runs from the repository root: a relative path is taken from there.)
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 DIR   (an image folder with DIR/train/, e.g. ROOT/n10000 from benchmarks/scale.py --root ROOT)" >&2
    exit 2
fi
DATA=$1
cd "$(dirname "$0")/.."
G=/sys/fs/cgroup/memory/resnet-decode-memory; mkdir -p $G
CACHE=$(mktemp -d --tmpdir resnet-decode-cache-XXXX); peak=0; alone=0
( echo $BASHPID > $G/cgroup.procs; exec env RESNET_CACHE=$CACHE .venv/bin/python -c "
import sys, time
from resnet.data.cache import decode
from resnet.data.datasets import load_splits
train = load_splits('imagefolder', sys.argv[1]).train
start = time.perf_counter()
decode(train, 128, workers=2, draft=True)
print(f'{len(train)} images in {time.perf_counter() - start:.1f} s')" "$DATA" ) &
PID=$!
while kill -0 $PID 2>/dev/null; do
  rss=$(awk '$1=="rss"{print $2}' $G/memory.stat); [ "$rss" -gt "$peak" ] && peak=$rss
  if [ "$(pgrep -c -P $PID)" = 0 ] && [ "$rss" -gt "$alone" ]; then alone=$rss; fi
  sleep 0.1
done
wait $PID
echo "peak anonymous memory $((peak / 1048576)) MiB; without decode workers $((alone / 1048576)) MiB"
rm -rf $CACHE; rmdir $G
