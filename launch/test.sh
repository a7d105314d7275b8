#!/usr/bin/env bash
# Runs the test suite, setting up the venv first. Extra arguments go to pytest:
#   bash launch/test.sh                 # everything (what CI runs)
#   bash launch/test.sh -m "not slow"   # skip the end-to-end tests
#   SW_ZOO_TEST_WORKERS=1 bash launch/test.sh   # one process (default 2: pytest-xdist, a file per
#                                               # worker so module fixtures are built once)
# tests/test_serve_browser.py drives the system's Chromium; on a fresh Debian CI machine (root,
# apt-get) it is installed here first (SW_ZOO_NO_BROWSER=1: don't). Elsewhere without it, that test
# is skipped and says why.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$SW_ZOO_ROOT"
workers=${SW_ZOO_TEST_WORKERS:-2}
case $workers in
  '' | *[!0-9]*) echo "launch/test.sh: SW_ZOO_TEST_WORKERS=$workers: expected a number of processes" >&2; exit 2 ;;
esac
if [ -z "${SW_ZOO_NO_BROWSER:-}" ] && ! command -v chromium > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "launch/test.sh: installing chromium with apt-get (for tests/test_serve_browser.py; once per machine)" >&2
    # Quiet on success; apt's own output only if it fails.
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > "$apt_log" 2>&1; then
      cat "$apt_log" >&2
      rm -f "$apt_log"
      # CI must not pass with the browser test silently skipped.
      echo "launch/test.sh: could not install chromium (above); fix that, or set SW_ZOO_NO_BROWSER=1 to run" \
           "without the browser test" >&2
      exit 1
    fi
    rm -f "$apt_log"
  else
    echo "launch/test.sh: no chromium on PATH (and not root with apt-get): tests/test_serve_browser.py will be skipped" >&2
  fi
fi
if [ "$workers" -le 1 ]; then
  exec python -m pytest -q "$@"
fi
exec python -m pytest -q -n "$workers" --dist loadfile "$@"
