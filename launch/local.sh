#!/usr/bin/env bash
# Train (or resume) on this machine: sets up the venv, then runs the trainer.
#
#   bash launch/local.sh CONFIG [--workdir DIR] [--config.key=value ...]
#   bash launch/local.sh configs/demo.py
#   bash launch/local.sh configs/demo.py:quick --workdir /tmp/q --config.optim.lr=0.003
#
# The workdir defaults to runs/<config name>[_<config args>]. Ctrl-C (or SIGTERM) saves a checkpoint and stops;
# running the same command again resumes from it.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -h || "$1" == --help ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# < 1 ))
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
config=$1; shift
# runs/<config>[_<args>]: a finetune or transfer flavour never resumes its source run's workdir.
name=$(basename "${config%%:*}" .py)
[[ "$config" == *:* ]] && name="${name}_$(printf '%s' "${config#*:}" | tr -c 'A-Za-z0-9=.-' '_' | tr '=' '-')"
workdir="runs/$name"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) workdir=$2; shift 2 ;;
    --workdir=*) workdir=${1#--workdir=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
cd "$SW_ZOO_ROOT"
exec python -m sw_zoo.train --config "$config" --workdir "$workdir" "${args[@]}"
