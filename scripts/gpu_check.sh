#!/usr/bin/env bash
# The GPU check as one command: install the carried wheels (.whl/, see scripts/gpu_wheels.txt)
# into /tmp/site when they are there, then run scripts/gpu_check.py with these arguments.
#   scripts/gpu_check.sh                 # on a GPU machine
#   scripts/gpu_check.sh --cpu-dry-run   # anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 scripts/gpu_check.py "$@"
