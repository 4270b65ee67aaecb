# shellcheck shell=bash disable=SC2034 # rc and the traps are the sourcing script's
# Sourced by deploy/ab.sh and deploy/bench.sh (not run by itself).
#
# run_load OUT ERR CMD...: runs the load generator with its stdout in OUT and
# its stderr in ERR, in the background, and waits for it; sets rc to its exit
# status. A signal to this script while it runs does not stop the nodes under
# it: a Ctrl-C at the terminal reaches tally-load as well (it ends the load,
# verifies what it acked, and a second Ctrl-C stops it), TERM and HUP are
# passed on to it as TERM (the same); once it has exited, this script exits
# with the signal's status (exit_if_signalled, after showing its summary;
# the EXIT trap then stops the nodes).
sig_status=  # exit status owed to a signal that came during the load
sig_count=0
load_pid=
during_load() {
  sig_status=$1
  sig_count=$((sig_count + 1))
  if [ "$2" = pass ] && [ -n "$load_pid" ]; then kill -TERM "$load_pid" 2>/dev/null || true; fi
}
exit_if_signalled() { if [ -n "$sig_status" ]; then exit "$sig_status"; fi; }
run_load() {
  local o=$1 e=$2 seen
  shift 2
  "$@" >"$o" 2>"$e" &
  load_pid=$!
  trap 'during_load 130 terminal' INT
  trap 'during_load 143 pass' TERM
  trap 'during_load 129 pass' HUP
  # wait returns early (over 128) when a trapped signal comes: wait again
  # until it returns with no signal meanwhile, which is the load's status.
  while :; do
    seen=$sig_count
    rc=0
    wait "$load_pid" || rc=$?
    [ "$sig_count" != "$seen" ] || break
  done
  load_pid=
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}
