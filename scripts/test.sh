#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. pytest's exit code is returned unchanged, so
# "no tests collected" (exit 5) fails like any other error.
set -euo pipefail
cd "$(dirname "$0")/.."
QMAPINR_WITH_BART=${QMAPINR_WITH_BART:-1} bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
