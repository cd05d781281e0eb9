#!/usr/bin/env bash
# Set up, then run the test suite under a virtual display (GUI tests need a real OpenGL context).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAPARI_MEDIMP_CACHE="${NAPARI_MEDIMP_CACHE:-$PWD/.cache/medimp}"
status=0
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
