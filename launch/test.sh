#!/usr/bin/env bash
# Runs the test suite, setting up the venv first. Extra arguments go to pytest:
#   bash launch/test.sh                 # everything (what CI runs)
#   bash launch/test.sh -m "not slow"   # skip the end-to-end tests
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$SW_ZOO_ROOT"
exec python -m pytest -q "$@"
