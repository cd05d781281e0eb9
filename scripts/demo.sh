#!/usr/bin/env bash
# Set up, then open napari with the synthetic sample graft (headless: screenshot + report in medimp-demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/medimp demo "$@"
