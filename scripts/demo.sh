#!/usr/bin/env bash
# Set up (idempotent) and run the end-to-end demo: simulate a small seeded brain phantom, replay it through the
# SUMMIT chain over a loopback socket (gadget launched as Gadgetron 4 does), write maps.h5, NIfTIs, maps.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec qmapinr demo --out "${1:-out/demo}"
