#!/usr/bin/env bash
# Runs the test suite, setting up the venv first. Extra arguments go to pytest:
#   bash launch/test.sh                 # everything (what CI runs)
#   bash launch/test.sh -m "not slow"   # skip the end-to-end tests
#   SW_ZOO_TEST_WORKERS=1 bash launch/test.sh   # one process (default 2: pytest-xdist, a file per
#                                               # worker so module fixtures are built once)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$SW_ZOO_ROOT"
workers=${SW_ZOO_TEST_WORKERS:-2}
case $workers in
  '' | *[!0-9]*) echo "launch/test.sh: SW_ZOO_TEST_WORKERS=$workers: expected a number of processes" >&2; exit 2 ;;
esac
if [ "$workers" -le 1 ]; then
  exec python -m pytest -q "$@"
fi
exec python -m pytest -q -n "$workers" --dist loadfile "$@"
