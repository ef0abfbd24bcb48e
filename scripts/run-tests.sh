#!/usr/bin/env bash
# The whole suite, as root, on the real kernel. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -ra --durations=40 "$@" tests
