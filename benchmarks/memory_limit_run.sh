#!/bin/bash
# resnet train on the 40,000-image generated folder (python benchmarks/scale.py --sizes 40000 makes it),
# with a cold cache, inside a 1 GiB cgroup-v1 memory group: the decode (a cache about twice the limit),
# then 60 s of training, then one SIGTERM. Run as root, with the machine to itself.
# Usage: benchmarks/memory_limit_run.sh DIR   (the folder scale.py made, e.g. ROOT/n40000)
# (The script runs from the repository root: a relative path is taken from there.)
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 DIR   (an image folder, e.g. ROOT/n40000 from benchmarks/scale.py --root ROOT --sizes 40000)" >&2
    exit 2
fi
DATA=$1
cd "$(dirname "$0")/.."
G=/sys/fs/cgroup/memory/resnet-mem1g; mkdir -p $G; echo $((1024*1024*1024)) > $G/memory.limit_in_bytes
C=$(mktemp -d --tmpdir resnet-memcache-XXXX); OUT=$(mktemp -d --tmpdir resnet-memrun-XXXX)/run; LOG=$OUT.log; peak=0
( echo $BASHPID > $G/cgroup.procs; exec env RESNET_CACHE=$C PYTHONUNBUFFERED=1 .venv/bin/resnet train \
    --dataset imagefolder --data-dir "$DATA" --epochs 1 --batch-size 16 --image-size 112 --quiet --out $OUT ) > $LOG 2>&1 &
PID=$!; start=$(date +%s); started=0; signalled=0
while kill -0 $PID 2>/dev/null; do
  rss=$(awk '$1=="rss"{print $2}' $G/memory.stat); [ "$rss" -gt "$peak" ] && peak=$rss
  if [ $started = 0 ] && grep -q "^run " $LOG; then started=$(date +%s); fi
  if [ $started != 0 ] && [ $signalled = 0 ] && [ $(( $(date +%s) - started )) -ge 60 ]; then kill -TERM $PID; signalled=1; fi
  sleep 0.2
done
wait $PID; code=$?
echo "exit $code; first step after $((started - start)) s; peak anonymous (rss) $((peak / 1048576)) MiB;" \
     "max usage $(( $(cat $G/memory.max_usage_in_bytes) / 1048576 )) MiB of 1024; failcnt $(cat $G/memory.failcnt);" \
     "oom kills $(awk '$1=="oom_kill"{print $2}' $G/memory.oom_control); cache $(du -sb $C | cut -f1) bytes"
tail -1 $LOG
rm -rf $C "$(dirname $OUT)"; rmdir $G
