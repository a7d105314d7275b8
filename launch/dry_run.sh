#!/usr/bin/env bash
# Sourced by tpu_pod.sh and sweep.sh: shell quoting and --dry-run. With dry_run=1, `run CMD...`
# prints "+ CMD" (one line, shell-quoted: paste it, or parse it with shlex) instead of running
# it and `note` prints "# TEXT"; otherwise both go to stderr and the command runs, like `set -x`.

dry_run=${dry_run:-0}

# One word, quoted for a POSIX shell only when it needs it; --flag=value is quoted after the `=`.
quote() {
  case $1 in
    '') printf "''" ;;
    --[a-z]*=*[!A-Za-z0-9_./:=,@%+-]*) printf '%s=%s' "${1%%=*}" "$(quote "${1#*=}")" ;;
    *[!A-Za-z0-9_./:=,@%+-]*)
      local rest=$1 out="'"
      while [[ $rest == *\'* ]]; do
        out+="${rest%%\'*}'\\''"
        rest=${rest#*\'}
      done
      printf '%s' "$out$rest'" ;;
    *) printf '%s' "$1" ;;
  esac
}

quote_words() {
  local sep="" word
  for word in "$@"; do printf '%s%s' "$sep" "$(quote "$word")"; sep=" "; done
}

run() {
  if [ "$dry_run" = 1 ]; then
    echo "+ $(quote_words "$@")"
  else
    echo "+ $(quote_words "$@")" >&2
    "$@"
  fi
}

note() { if [ "$dry_run" = 1 ]; then echo "# $*"; else echo "$*" >&2; fi; }
