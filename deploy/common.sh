# shellcheck shell=bash disable=SC2034,SC2154 # rc and the traps are the sourcing script's; it sets pids, data, port, addrs, shards
# Sourced by deploy/ab.sh and deploy/bench.sh (not run by itself): waiting
# for their fresh cluster, and running the load generator under their traps.
# They set pids (the nodes), data, port, addrs and shards, and may define
# on_start_failure (run before a failed start exits).

# tls_setup TALLYCTL DIR writes a development CA and certificates under DIR
# (tallyctl certs) and sets tls_node (tallyd's --tls-* flags) and tls_client
# (tallyctl's and tally-load's), which stay empty without it. Expand them as
# ${a[@]+"${a[@]}"}: bash before 4.4 takes an empty array for an unbound
# variable under set -u.
tls_node=()
tls_client=()
tls_setup() {
  "$1" certs --dir "$2" --hosts 127.0.0.1 >/dev/null
  tls_node=(--tls-cert "$2/node.pem" --tls-key "$2/node-key.pem" --tls-ca "$2/ca.pem")
  tls_client=(--tls-cert "$2/client.pem" --tls-key "$2/client-key.pem" --tls-ca "$2/ca.pem")
}

# cluster_alive KNOB exits 1 if a node has exited: a node that exits at
# start (a port taken by another cluster, which would then answer instead)
# must not leave the script measuring a cluster that is not its fresh one.
# KNOB names the variable that moves the ports.
cluster_alive() {
  for k in 0 1 2; do
    if ! kill -0 "${pids[$k]}" 2>/dev/null; then
      echo "node n$((k + 1)) exited at start (another cluster on ports $((port + 1))-$((port + 23))? $1 moves them); logs in $data" >&2
      tail -n 5 "$data"/n*.log >&2
      if declare -F on_start_failure >/dev/null; then on_start_failure; fi
      exit 1
    fi
  done
}

# cluster_ready TALLYCTL KNOB waits until every shard has a leader and all
# three nodes still run, bounded by time (one tallyctl call can take its
# whole 1 s), or exits 1.
cluster_ready() {
  local deadline=$((SECONDS + 30)) led
  while [ "$SECONDS" -lt "$deadline" ]; do
    cluster_alive "$2"
    led=$("$1" ${tls_client[@]+"${tls_client[@]}"} --addr "$addrs" --timeout 1s cluster 2>/dev/null | grep -cE "^[0-9]+ +n" || true)
    if [ "$led" = "$shards" ]; then
      sleep 1
      cluster_alive "$2"
      return
    fi
    sleep 0.2
  done
  echo "cluster did not elect every one of $shards shards' leaders within 30 s; logs in $data" >&2
  tail -n 5 "$data"/n*.log >&2
  if declare -F on_start_failure >/dev/null; then on_start_failure; fi
  exit 1
}

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
