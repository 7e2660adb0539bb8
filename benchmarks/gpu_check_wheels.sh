#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (its image has torch, triton, transformers, tokenizers, mpi4py, ninja, but not
# DeepSpeed, megatron-core, liger-kernel, webdataset or pydantic), for Python 3.12 x86_64, into .whl/ (git-ignored
# through .git/info/exclude). Run once here, then carry .whl in the `run` call (benchmarks/README.md, GPU check).
set -euo pipefail
cd "$(dirname "$0")/.."
excl="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx "/.whl/" "$excl" 2>/dev/null || echo /.whl/ >> "$excl"
mkdir -p .whl
PY=${PY:-.venv/bin/python}
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# binary wheels (pure-python ones match any platform)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
    megatron-core==0.16.1 liger-kernel==0.8.5 webdataset==1.0.2 braceexpand hjson \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions
# DeepSpeed ships a source archive only: build its pure-python wheel (no ops compiled: DS_BUILD_OPS=0)
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
