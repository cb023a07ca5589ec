#!/usr/bin/env bash
# Makes .gpu-data/ (ignored by git), what benchmarks/gpu_check.sh reads on a GPU machine that has no
# internet: cifar10-train.tar.gz (CIFAR-10's training images as cifar-10/train/<class>/*, symlinks
# followed), airbench-0.1.8.tar.gz (the airbench sdist from the package index) and wheels/ (pytest and
# its dependencies, for a machine without it). Run it where the package index is reachable:
#
#   benchmarks/pack_gpu_data.sh DATA/cifar-10/train
#
# Then carry .gpu-data with the tree to the GPU machine (about 45 MB for CIFAR-10's JPEGs).
set -euo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: benchmarks/pack_gpu_data.sh CIFAR10_TRAIN_DIR   (CIFAR-10's training images as <class>/ folders)" >&2
    exit 2
fi
source_dir=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p .gpu-data
classes=$(find "$source_dir" -mindepth 1 -maxdepth 1 -type d | wc -l)
images=$(find -L "$source_dir" -mindepth 2 -type f | wc -l)
echo "pack_gpu_data: $images images in $classes class folders of $source_dir"
# The archive's top folder is cifar-10/train, whatever the source folder is called.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/cifar-10"
ln -s "$source_dir" "$staging/cifar-10/train"
tar -czhf .gpu-data/cifar10-train.tar.gz -C "$staging" cifar-10
echo "pack_gpu_data: wrote .gpu-data/cifar10-train.tar.gz ($(du -h .gpu-data/cifar10-train.tar.gz | cut -f1))"
[ -f .gpu-data/airbench-0.1.8.tar.gz ] || "$py" -m pip download --quiet --no-deps --no-binary :all: \
    airbench==0.1.8 -d .gpu-data
# pytest for Python 3.10 and later: tomli and exceptiongroup, which it needs before 3.11, named as pip
# reads the markers of the Python that runs it.
"$py" -m pip download --quiet --only-binary :all: --python-version 3.10 pytest exceptiongroup tomli \
    -d .gpu-data/wheels
ls -la .gpu-data .gpu-data/wheels
