#!/usr/bin/env bash
# Hyperparameter sweeps: W&B sweep agents, or the same grid run locally one after another.
#
#   bash launch/sweep.sh create [YAML]                        # register with W&B; prints SWEEP_ID
#   bash launch/sweep.sh agent SWEEP_ID [--count N] [--agents K]
#   bash launch/sweep.sh local [YAML] [--runs DIR] [--config-arg ARGS] [--config.key=value ...]
#   bash launch/sweep.sh run --config=CONFIG [--config.key=value ...]  # what a W&B agent runs
#
# YAML defaults to launch/sweep_size_x_activation.yaml (from launch/make_sweep.py: the 18 recipe
# configs, NFNet l0/l1/l2 x silu/hswish/relu x eca/none). `agent` starts K agents here (default
# 1; more log to runs/sweep/agent-<i>.log), each taking up to N runs; a run trains in
# runs/sweep/SWEEP_ID/RUN_ID and logs online. W&B sweeps need the W&B service: offline, `local`
# runs the YAML's grid through launch/local.sh, one run per grid point in DIR/<sweep>/<point>
# (DIR: runs/sweep), skipping finished ones, so rerunning resumes it. --config-arg adds config
# args to every run (runlocal: a CPU smoke test of the whole grid); overrides go to every run.
# On a pod, run one grid point at a time with launch/tpu_pod.sh CONFIG (`local --dry-run` lists
# them). --dry-run (any mode) prints the commands ("+ " lines) instead of running them.
#
# Environment:
#   WANDB_MODE      offline or disabled: create and agent stop with a pointer to `local`
#   WANDB_SWEEP_ID  set by the W&B agent for `run` (with WANDB_RUN_ID): names the run's workdir
#   WANDB_RUN_ID    set by the W&B agent for `run`
# wandb itself reads WANDB_API_KEY (or `wandb login`), WANDB_ENTITY and WANDB_PROJECT.
set -euo pipefail
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
if [ $# -lt 1 ] || [[ "$1" == -h || "$1" == --help ]]; then
  usage
  exit $(( $# < 1 ))
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "sweep.sh: $*" >&2; exit 1; }
source "$here/dry_run.sh"

args=()
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then dry_run=1; else args+=("$arg"); fi
done
set -- ${args[@]+"${args[@]}"}
mode=${1:-}; shift || true
default_yaml=launch/sweep_size_x_activation.yaml
# Paths the user typed are relative to where they ran this; everything else to the repo root.
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# A run's trainer arguments, as W&B gives them (`--config=FILE --config.key=value ...`), split
# into `config` and the other arguments `rest`, which is how launch/local.sh takes them.
split_config() {
  config="" rest=()
  while [ $# -gt 0 ]; do
    case $1 in
      --config=*) config=${1#--config=}; shift ;;
      --config) config=${2:?--config needs a file}; shift 2 ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  [ -n "$config" ] || die "no --config=FILE among the run's arguments"
}

offline_hint() {
  cat >&2 << EOF
sweep.sh: W&B sweeps are coordinated by the W&B service, which $1.
Offline, run the same grid here, one run after another (add --dry-run to see the commands):
  bash launch/sweep.sh local ${2:-$default_yaml}
EOF
}
need_service() {  # YAML-or-empty
  case ${WANDB_MODE:-} in
    offline | disabled | dryrun) offline_hint "WANDB_MODE=$WANDB_MODE turns off" "${1:-}"; exit 1 ;;
  esac
}

case $mode in
  create)
    [ $# -le 1 ] || die "create takes one YAML, not: $*"
    yaml=$(absolute "${1:-$(dirname "$here")/$default_yaml}")
    [ -f "$yaml" ] || die "no sweep file $yaml"
    need_service "${1:-}"
    source "$here/setup_env.sh"
    cd "$SW_ZOO_ROOT"
    if [ "$dry_run" = 1 ]; then run wandb sweep "$yaml"; exit 0; fi
    # wandb's own messages go to stderr; stdout gets only the sweep path, for scripts.
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    echo "+ $(quote_words wandb sweep "$yaml")" >&2
    if ! wandb sweep "$yaml" > "$log" 2>&1; then
      cat "$log" >&2
      offline_hint "could not be reached or refused the sweep (see above; \`wandb login\`?)" "${1:-}"
      exit 1
    fi
    cat "$log" >&2
    sweep=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | sed -n 's/.*Run sweep agent with: wandb agent //p' | tail -1)
    [ -n "$sweep" ] || die "wandb sweep succeeded but printed no sweep id (see above)"
    echo "$sweep"
    ;;

  agent)
    sweep="" count="" agents=1
    while [ $# -gt 0 ]; do
      case $1 in
        --count) count=${2:?--count needs a number}; shift 2 ;;
        --count=*) count=${1#--count=}; shift ;;
        --agents) agents=${2:?--agents needs a number}; shift 2 ;;
        --agents=*) agents=${1#--agents=}; shift ;;
        -*) die "agent: unknown option $1" ;;
        *) [ -z "$sweep" ] || die "agent takes one SWEEP_ID"; sweep=$1; shift ;;
      esac
    done
    [ -n "$sweep" ] || die "agent needs the SWEEP_ID that \`bash launch/sweep.sh create\` printed"
    [[ $agents =~ ^[1-9][0-9]*$ ]] || die "--agents must be a positive number, not $agents"
    [[ -z $count || $count =~ ^[1-9][0-9]*$ ]] || die "--count must be a positive number, not $count"
    need_service ""
    source "$here/setup_env.sh"
    cd "$SW_ZOO_ROOT"  # the YAML's command is relative to the repo root
    agent=(wandb agent ${count:+--count "$count"} "$sweep")
    if [ "$agents" = 1 ]; then
      run "${agent[@]}"
      exit 0
    fi
    # Several agents on one machine (e.g. one per GPU, with CUDA_VISIBLE_DEVICES set per agent by
    # the caller): each in the background with its own log; Ctrl-C stops them all.
    pids=()
    [ "$dry_run" = 1 ] || mkdir -p runs/sweep
    for i in $(seq "$agents"); do
      log=runs/sweep/agent-$i.log
      if [ "$dry_run" = 1 ]; then
        echo "+ $(quote_words "${agent[@]}") > $log 2>&1 &"
      else
        echo "+ $(quote_words "${agent[@]}") > $log 2>&1 &" >&2
        "${agent[@]}" > "$log" 2>&1 &
        pids+=($!)
      fi
    done
    [ "$dry_run" = 0 ] || exit 0
    # Background jobs of a script ignore SIGINT, so forward Ctrl-C (and TERM) as TERM.
    trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
    note "$agents agents running; logs in runs/sweep/agent-*.log"
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    exit $status
    ;;

  local)
    yaml="" runs_dir=runs/sweep config_arg="" overrides=()
    while [ $# -gt 0 ]; do
      case $1 in
        --runs) runs_dir=$(absolute "${2:?--runs needs a directory}"); shift 2 ;;
        --runs=*) runs_dir=$(absolute "${1#--runs=}"); shift ;;
        --config-arg) config_arg=${2:?--config-arg needs config args, e.g. runlocal}; shift 2 ;;
        --config-arg=*) config_arg=${1#--config-arg=}; shift ;;
        -*) overrides+=("$1"); shift ;;
        *) [ -z "$yaml" ] || die "local takes one YAML (overrides look like --config.key=value)"
           yaml=$(absolute "$1"); shift ;;
      esac
    done
    [ -n "$yaml" ] || yaml=$(dirname "$here")/$default_yaml
    [ -f "$yaml" ] || die "no sweep file $yaml"
    source "$here/setup_env.sh"
    cd "$SW_ZOO_ROOT"
    grid=$(python launch/make_sweep.py --grid "$yaml") || die "could not read the grid of $yaml"
    sweep_name=$(head -n 1 <<< "$grid")
    total=$(( $(wc -l <<< "$grid") - 1 ))
    note "Sweep $sweep_name: $total runs, one after another, in $runs_dir/$sweep_name/"
    failed=() i=0
    while read -r slug words; do
      i=$(( i + 1 ))
      eval "point=($words)"  # make_sweep.py shell-quotes (shlex.join), so this is exact
      workdir=$runs_dir/$sweep_name/$slug
      if [ -f "$workdir/eval_summary.json" ]; then
        note "[$i/$total] $slug finished already ($workdir/eval_summary.json): skipped"
        continue
      fi
      note "[$i/$total] $slug"
      split_config "${point[@]}"
      if [ -n "$config_arg" ]; then
        case $config in *:*) config+=",$config_arg" ;; *) config+=":$config_arg" ;; esac
      fi
      status=0
      run bash launch/local.sh "$config" --workdir "$workdir" ${rest[@]+"${rest[@]}"} \
        ${overrides[@]+"${overrides[@]}"} < /dev/null || status=$?
      if [ $status = 130 ]; then
        note "Interrupted: rerun the same command to resume this run and the rest of the grid"
        exit 130
      fi
      [ $status = 0 ] || { failed+=("$slug"); note "$slug failed (exit $status); going on"; }
    done < <(tail -n +2 <<< "$grid")
    if [ ${#failed[@]} -gt 0 ]; then
      echo "sweep.sh: failed runs: ${failed[*]}" >&2
      exit 1
    fi
    ;;

  run)
    if [ -z "${WANDB_SWEEP_ID:-}" ] || [ -z "${WANDB_RUN_ID:-}" ]; then
      die "run is what W&B sweep agents execute (they set WANDB_SWEEP_ID and WANDB_RUN_ID);" \
          "to run a grid yourself use: bash launch/sweep.sh local [YAML]"
    fi
    split_config "$@"
    # One workdir per W&B run; the agent's run owns the W&B logging, so it must be online.
    cmd=(bash "$here/local.sh" "$config" --workdir "runs/sweep/$WANDB_SWEEP_ID/$WANDB_RUN_ID"
         --config.wandb.mode=online ${rest[@]+"${rest[@]}"})
    if [ "$dry_run" = 1 ]; then run "${cmd[@]}"; exit 0; fi
    echo "+ $(quote_words "${cmd[@]}")" >&2
    exec "${cmd[@]}"
    ;;

  *) die "unknown mode $mode: expected create, agent, local or run (see --help)" ;;
esac
