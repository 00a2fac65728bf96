#!/usr/bin/env bash
# The one test command: makes .venv if needed, installs the pinned requirements, builds the JPEG
# scan walk in C as the web image does (scripts/build-native.sh), runs pytest.
# Arguments go to pytest (e.g. scripts/test.sh -m 'not docker' -x).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip prints nothing when everything is already installed at the pinned versions.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
bash scripts/build-native.sh
exec .venv/bin/python -m pytest "$@"
