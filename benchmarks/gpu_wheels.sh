#!/usr/bin/env bash
# The wheels a lent GPU machine (no network; torch, lightning, transformers preinstalled) needs for
# benchmarks/gpu_session.sh and the whole test suite: ../shared/gpu/wheels.sh (diffusers, omegaconf, ...) plus
# what requirements.txt adds for the exporters, the result page and the loggers (PyMCubes, trimesh, pygltflib and
# its dependencies, scipy, tensorboardX). Without these the GPU test run fails on missing modules, not on code.
#   bash benchmarks/gpu_wheels.sh [DEST]      (DEST defaults to .whl; carry it, git-excluded)
set -euo pipefail
dest=${1:-.whl}
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/../shared/gpu/wheels.sh" "$dest" >/dev/null
# the versions of requirements.txt, for the GPU machine's Python 3.12
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" \
  $(grep -E '^(PyMCubes|scipy|trimesh|pygltflib|dataclasses-json|marshmallow|typing-inspect|mypy-extensions|deprecated|wrapt|tensorboardX)==' \
    "$here/requirements.txt") 2>&1 | grep -v "is ignored" || true
ls -la "$dest"
