#!/usr/bin/env bash
# Sourced by the other launch scripts: creates (or reuses) the project's virtualenv and installs
# sw_zoo into it, editable, with the `test` and `parity` (torch CPU + timm) extras. Reinstalls
# only when pyproject.toml, the extras or the extra packages change.
#   SW_ZOO_VENV          venv location (default: <repo>/.venv)
#   PYTHON               interpreter used to create it (default: python3; needs >= 3.11)
#   SW_ZOO_EXTRAS        extras to install (default: test,parity; empty: none)
#   SW_ZOO_PIP_PACKAGES  more requirements installed in the same pip call, space-separated
#                        (default: none), e.g. 'jax[tpu]' on TPU VMs (launch/tpu_pod.sh)
set -euo pipefail
SW_ZOO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SW_ZOO_VENV=${SW_ZOO_VENV:-$SW_ZOO_ROOT/.venv}
if [ ! -x "$SW_ZOO_VENV/bin/python" ]; then
  "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "sw_zoo needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
  echo "Creating virtualenv $SW_ZOO_VENV" >&2
  "${PYTHON:-python3}" -m venv "$SW_ZOO_VENV"
fi
stamp="$SW_ZOO_VENV/.sw_zoo_install_stamp"
# `-` not `:-`: an empty SW_ZOO_EXTRAS means no extras, not the default.
extras=${SW_ZOO_EXTRAS-test,parity}
# read -a splits on spaces without globbing, so 'jax[tpu]' stays a requirement, not a pattern.
read -r -a pip_packages <<< "${SW_ZOO_PIP_PACKAGES:-}"
# The stamp hashes exactly what gets installed. With no extra packages the hashed text is what it
# was before SW_ZOO_PIP_PACKAGES existed, so existing venvs are not reinstalled for nothing.
want=$( (cat "$SW_ZOO_ROOT/pyproject.toml"; echo "$extras"
         [ ${#pip_packages[@]} -eq 0 ] || echo "${pip_packages[*]}") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing sw_zoo and its dependencies into $SW_ZOO_VENV (first run takes a few minutes)" >&2
  "$SW_ZOO_VENV/bin/python" -m pip install -q --upgrade pip
  "$SW_ZOO_VENV/bin/python" -m pip install -q -e "$SW_ZOO_ROOT${extras:+[$extras]}" \
    ${pip_packages[@]+"${pip_packages[@]}"}
  echo "$want" > "$stamp"
fi
export PATH="$SW_ZOO_VENV/bin:$PATH"
