#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) the TPU, copy this checkout to every worker,
# install sw_zoo with jax[tpu] there, and start the trainer on all workers, detached.
#
#   bash launch/tpu_pod.sh [--dry-run] CONFIG [--workdir gs://...] [--config.key=value ...]
#   TPU_NAME=tagger TPU_ZONE=us-central2-b GCS_BUCKET=my-bucket \
#     bash launch/tpu_pod.sh configs/l2_silu_eca.py --config.data.dir=gs://my-bucket/danbooru2021
#
# Every worker runs `python -m sw_zoo.train --config CONFIG --workdir WORKDIR --multihost
# OVERRIDES`; the workdir defaults to gs://$GCS_BUCKET/runs/<config name>[_<config args>]. Running the command
# again ships the current code, stops the running trainer (it saves a checkpoint first) and
# resumes from the workdir; a preempted Spot TPU is deleted and recreated. --dry-run prints each
# command ("+ " lines, shell-quoted; "# " lines are notes) instead of running it: no gcloud needed.
#
# Environment:
#   TPU_NAME          TPU VM to create or reuse (required)
#   TPU_ZONE          its zone, e.g. us-central2-b (required)
#   TPU_PROJECT       GCP project (default: gcloud's configured project)
#   TPU_TYPE          accelerator type of a new TPU (default: v4-32); when set, reusing a TPU of
#                     another type is an error
#   TPU_RUNTIME       TPU software version (default from TPU_TYPE: tpu-ubuntu2204-base up to v4,
#                     v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
#   TPU_SPOT          1: create a Spot TPU (cheaper, preemptible) (default: 0)
#   TPU_CREATE_FLAGS  more flags for `tpu-vm create`, e.g. "--network=NET --reserved"
#   TPU_SSH_FLAGS     more flags for `tpu-vm ssh` and `scp`, e.g. "--tunnel-through-iap"
#   GCS_BUCKET        bucket of the default workdir (required unless --workdir is given)
#   SW_ZOO_REF        git commit/branch/tag to ship (default: the working tree as it is,
#                     uncommitted and untracked non-ignored files included)
#   SW_ZOO_CACHE      passed to the trainer: where each worker mirrors gs:// data (default
#                     ~/.cache/sw_zoo; point it at a big local SSD)
#   SW_ZOO_CACHE_MAX_GB  passed to the trainer: the bound on that mirror (default: 90% of the
#                     disk it is on); each worker stages only the shards of its own slice
#
# On each worker: code in ~/sw_zoo, venv in ~/sw_zoo_venv, trainer log in ~/sw_zoo_train.log.
set -euo pipefail
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
if [ $# -lt 1 ] || [[ "$1" == -h || "$1" == --help ]]; then
  usage
  exit $(( $# < 1 ))
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "tpu_pod.sh: $*" >&2; exit 1; }
source "$root/launch/dry_run.sh"

dry_run=0
args=()
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then dry_run=1; else args+=("$arg"); fi
done
[ ${#args[@]} -gt 0 ] || die "no CONFIG given (see --help)"

# ---- Arguments: the config (a path inside this repo), the workdir, trainer overrides ---------
config=${args[0]}
cfg_file=${config%%:*}
cfg_arg=${config#"$cfg_file"}  # ":key=value,..." or empty
if [ -f "$cfg_file" ]; then
  cfg_abs="$(cd "$(dirname "$cfg_file")" && pwd)/$(basename "$cfg_file")"
  case $cfg_abs in
    "$root"/*) cfg_file=${cfg_abs#"$root"/} ;;
    *) die "$config is outside the repository; the workers only get the repository" ;;
  esac
elif [ ! -f "$root/$cfg_file" ] && [ -z "${SW_ZOO_REF:-}" ]; then
  die "config file $cfg_file not found"
fi
if [ -n "${SW_ZOO_REF:-}" ]; then
  git -C "$root" rev-parse -q --verify "${SW_ZOO_REF}^{commit}" > /dev/null \
    || die "SW_ZOO_REF=$SW_ZOO_REF is not a commit of this repository"
  git -C "$root" cat-file -e "${SW_ZOO_REF}:$cfg_file" 2> /dev/null \
    || die "$cfg_file is not in SW_ZOO_REF=$SW_ZOO_REF"
fi
name=$(basename "$cfg_file" .py)
# <config>[_<args>], as launch/local.sh: a finetune or transfer flavour gets its own workdir.
[[ "$config" == *:* ]] && name="${name}_$(printf '%s' "${config#*:}" | tr -c 'A-Za-z0-9=.-' '_' | tr '=' '-')"

workdir=""
overrides=()
set -- ${args[@]+"${args[@]:1}"}
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) [ $# -ge 2 ] || die "--workdir needs a value"; workdir=$2; shift 2 ;;
    --workdir=*) workdir=${1#--workdir=}; shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done

# ---- Environment ------------------------------------------------------------------------------
need() {  # NAME WHAT: a clear error naming the variable, before anything runs
  [ -n "${!1:-}" ] || die "$1 is not set: $2 (see bash launch/tpu_pod.sh --help)"
}
need TPU_NAME "the TPU VM to create or reuse"
need TPU_ZONE "the zone of the TPU, e.g. us-central2-b"
if [ -z "$workdir" ]; then
  need GCS_BUCKET "the bucket for the workdir gs://\$GCS_BUCKET/runs/$name (or pass --workdir)"
  workdir="gs://${GCS_BUCKET%/}/runs/$name"
fi
case $workdir in
  gs://*) ;;
  *) echo "tpu_pod.sh: warning: workdir $workdir is not on GCS; every worker must see the same" \
       "checkpoints, so it has to be a filesystem they all mount" >&2 ;;
esac
type_asked=${TPU_TYPE:-}
accelerator=${TPU_TYPE:-v4-32}
case $accelerator in
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v5litepod-* | v5e-*) default_runtime=v2-alpha-tpuv5-lite ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
runtime=${TPU_RUNTIME:-$default_runtime}
case ${TPU_SPOT:-0} in
  1 | true | yes) spot=(--spot) ;;
  0 | false | no) spot=() ;;
  *) die "TPU_SPOT=$TPU_SPOT: expected 1 (a Spot TPU) or 0" ;;
esac
# read -a: word-split the flag lists without glob expansion.
read -r -a create_flags <<< "${TPU_CREATE_FLAGS:-}"
read -r -a ssh_flags <<< "${TPU_SSH_FLAGS:-}"

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$TPU_ZONE")
[ -z "${TPU_PROJECT:-}" ] || where+=(--project="$TPU_PROJECT")
on_workers=(--worker=all "${where[@]}" ${ssh_flags[@]+"${ssh_flags[@]}"})

if [ $dry_run = 1 ]; then
  tmp=/tmp/sw_zoo_pod.XXXXXX
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
fi

# ---- 1. The TPU: reuse it if it exists, else create it ---------------------------------------
create_tpu() {
  local cmd=("${tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$accelerator"
             --version="$runtime")
  run "${cmd[@]}" ${spot[@]+"${spot[@]}"} ${create_flags[@]+"${create_flags[@]}"}
}
describe=("${tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format="value(state,acceleratorType)")
if [ $dry_run = 1 ]; then
  note "reuse $TPU_NAME if describe finds it (READY; STOPPED: start; PREEMPTED: delete), else:"
  run "${describe[@]}"
  create_tpu
else
  echo "+ $(quote_words "${describe[@]}")" >&2
  # stderr apart: gcloud may warn there (e.g. about updates) while stdout holds the answer.
  if found=$("${describe[@]}" 2> "$tmp/describe.err"); then
    read -r state found_type <<< "$found"
    if [ -n "$type_asked" ] && [ "$found_type" != "$type_asked" ]; then
      die "TPU $TPU_NAME exists as a $found_type, not TPU_TYPE=$type_asked: delete it or use another TPU_NAME"
    fi
    case $state in
      READY) note "Reusing TPU $TPU_NAME ($found_type)" ;;
      STOPPED) run "${tpu[@]}" start "$TPU_NAME" "${where[@]}" ;;
      PREEMPTED | TERMINATED)
        # A preempted Spot TPU cannot be restarted; the run resumes from its GCS checkpoints.
        note "TPU $TPU_NAME is $state: deleting and recreating it"
        run "${tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
        create_tpu ;;
      *) die "TPU $TPU_NAME is ${state:-in an unknown state}; rerun when it is READY" ;;
    esac
  elif grep -q NOT_FOUND "$tmp/describe.err"; then
    create_tpu
  else
    cat "$tmp/describe.err" >&2
    die "could not look up TPU $TPU_NAME (is gcloud installed and logged in, TPU_ZONE/TPU_PROJECT right?)"
  fi
fi

# ---- 2. The code: one tarball, copied to every worker ----------------------------------------
# A `git archive` is exactly the repository's files (no venv, data or runs, which .gitignore
# keeps out) and unpacks the same on every worker. Without SW_ZOO_REF it archives a snapshot of
# the working tree, taken with a temporary index so the user's own index is left alone.
tarball=$tmp/sw_zoo.tar.gz
if [ -n "${SW_ZOO_REF:-}" ]; then
  run git -C "$root" archive --format=tar.gz -o "$tarball" "$SW_ZOO_REF"
else
  index=$(git -C "$root" rev-parse --absolute-git-dir)/index
  snapshot=(env GIT_INDEX_FILE="$tmp/index" git -C "$root")
  if [ -f "$index" ]; then run cp "$index" "$tmp/index"; fi
  run "${snapshot[@]}" add -A
  if [ $dry_run = 1 ]; then
    echo "+ tree=\$($(quote_words "${snapshot[@]}" write-tree))"
    echo "+ $(quote_words git -C "$root" archive --format=tar.gz -o "$tarball") \"\$tree\""
  else
    tree=$("${snapshot[@]}" write-tree)
    note "Shipping the working tree of $(git -C "$root" describe --always --dirty) (tree $tree)"
    run git -C "$root" archive --format=tar.gz -o "$tarball" "$tree"
  fi
fi
run "${tpu[@]}" scp "$tarball" "$TPU_NAME:sw_zoo.tar.gz" "${on_workers[@]}"

# ---- 3. Install on every worker ---------------------------------------------------------------
# Statements joined with "; " keep each remote command on one line (the dry-run format). A
# running trainer is stopped before its code is replaced (it checkpoints on SIGTERM); checking
# its /proc cmdline rather than `kill -0` ignores a reused pid, and an exited (zombie) one.
join() { local out=$1; shift; for part in "$@"; do out+="; $part"; done; printf '%s' "$out"; }
setup=$(join \
  'set -e' \
  'pid=$(cat ~/sw_zoo_train.pid 2>/dev/null || true)' \
  'running() { [ -n "$pid" ] && grep -qs sw_zoo.train /proc/$pid/cmdline; }' \
  'if running; then echo "$(hostname): stopping the running trainer (pid $pid); it saves a checkpoint first"; kill -TERM $pid; for i in $(seq 900); do running || break; sleep 1; done; if running; then kill -KILL $pid; fi; fi' \
  'rm -rf ~/sw_zoo.new && mkdir ~/sw_zoo.new && tar -xzf ~/sw_zoo.tar.gz -C ~/sw_zoo.new && rm -rf ~/sw_zoo && mv ~/sw_zoo.new ~/sw_zoo' \
  'py=; for p in python3.13 python3.12 python3.11 python3; do if $p -c "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then py=$(command -v $p); break; fi; done' \
  'if [ -z "$py" ]; then echo "$(hostname): no Python >= 3.11, installing one with uv"; PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user uv; ~/.local/bin/uv python install 3.11; py=$(~/.local/bin/uv python find 3.11); fi' \
  'PYTHON=$py SW_ZOO_VENV=~/sw_zoo_venv SW_ZOO_EXTRAS= SW_ZOO_PIP_PACKAGES="jax[tpu]" bash ~/sw_zoo/launch/setup_env.sh')
run "${tpu[@]}" ssh "$TPU_NAME" "${on_workers[@]}" --command="$setup"

# ---- 4. Start the trainer on every worker, detached -------------------------------------------
# setsid + nohup + redirected stdio: the trainer outlives the ssh session; its pid is kept so
# the next launch can stop it.
# The mirror of gs:// data on each worker (where, how big) follows this shell's settings.
pass_env=()
[ -z "${SW_ZOO_CACHE:-}" ] || pass_env+=("SW_ZOO_CACHE=$SW_ZOO_CACHE")
[ -z "${SW_ZOO_CACHE_MAX_GB:-}" ] || pass_env+=("SW_ZOO_CACHE_MAX_GB=$SW_ZOO_CACHE_MAX_GB")
trainer="${pass_env[*]:+env $(quote_words "${pass_env[@]}") }~/sw_zoo_venv/bin/python $(quote_words \
  -m sw_zoo.train --config "$cfg_file$cfg_arg" --workdir "$workdir" --multihost ${overrides[@]+"${overrides[@]}"})"
start=$(join \
  'cd ~/sw_zoo' \
  'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting sw_zoo.train" >> ~/sw_zoo_train.log' \
  "setsid nohup $trainer >> ~/sw_zoo_train.log 2>&1 < /dev/null & echo \$! > ~/sw_zoo_train.pid" \
  'echo "$(hostname): trainer running (pid $(cat ~/sw_zoo_train.pid)), log ~/sw_zoo_train.log"')
run "${tpu[@]}" ssh "$TPU_NAME" "${on_workers[@]}" --command="$start"

worker0=("${tpu[@]}" ssh "$TPU_NAME" --worker=0 "${where[@]}" ${ssh_flags[@]+"${ssh_flags[@]}"})
prefix=""
[ $dry_run = 0 ] || prefix="# "
cat << EOF
${prefix}Training on every worker of $TPU_NAME; workdir $workdir
${prefix}Follow worker 0's log:
${prefix}  $(quote_words "${worker0[@]}" --command='tail -n 200 -F ~/sw_zoo_train.log')
${prefix}Stop it (saves a checkpoint; rerun this command to resume):
${prefix}  $(quote_words "${tpu[@]}" ssh "$TPU_NAME" "${on_workers[@]}" --command='kill -TERM $(cat ~/sw_zoo_train.pid)')
${prefix}Delete the TPU when done:
${prefix}  $(quote_words "${tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet)
EOF
