#!/usr/bin/env bash
# Idempotent set-up on a fresh machine (Python >= 3.10 with pip): CPU torch, the plugin and its test extras.
# Used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # Pin the CPU build: an unpinned 'torch' from PyPI is a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test,phantoms]"
if [ "${QMAPINR_WITH_BART:-0}" = "1" ] && ! command -v bart >/dev/null 2>&1; then
  # BART CLI (Debian package) for the peer benchmark; the tests skip with a clear reason without it.
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq bart) >/dev/null 2>&1 \
      || echo "setup: could not install the Debian package 'bart'; BART runs will be skipped" >&2
  fi
fi
