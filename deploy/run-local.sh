#!/usr/bin/env bash
# Starts a three-node Tally cluster on 127.0.0.1 with data under ./data/,
# bootstrapping it on first start and resuming on later ones. Stays in the
# foreground; Ctrl-C stops all three nodes cleanly.
#   Node i (1..3): gRPC 127.0.0.1:710i, Raft 127.0.0.1:720i, metrics 127.0.0.1:730i.
# Environment: SHARDS (default 8, fixed at first start), DATA (default ./data),
# BIN (default ./bin), TALLYD_FLAGS (extra tallyd flags, e.g. --pprof),
# TLS=1 (mutual TLS on every link, with a development CA and certificates
# that 'tallyctl certs' writes under $DATA/tls on first use).
set -euo pipefail
# tallyctl and tally-load read TALLY_TLS_* when no flag names the files; this
# script's cluster gets its TLS, if any, from its own flags.
unset TALLY_TLS_CERT TALLY_TLS_KEY TALLY_TLS_CA
# Pebble's memtables are 64 MiB arenas that every write inserts into at
# random: with transparent huge pages in "madvise" mode, glibc backs them
# with huge pages only when asked (glibc >= 2.35; others ignore it). Batched
# throughput +10-15% on the 2-CPU box (docs/BENCHMARKS.md, "Huge pages");
# GLIBC_TUNABLES= (empty) turns it off.
export GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}
shards=${SHARDS:-8}
data=${DATA:-./data}
bin=${BIN:-./bin}
peers="n1=127.0.0.1:7201/127.0.0.1:7101,n2=127.0.0.1:7202/127.0.0.1:7102,n3=127.0.0.1:7203/127.0.0.1:7103"
mkdir -p "$data"
# The arrays are expanded as ${a[@]+"${a[@]}"}: bash before 4.4 (macOS's
# 3.2) takes an empty array for an unbound variable under set -u.
tls_node=()
tls_ctl=()
tls_hint=
if [ -n "${TLS:-}" ]; then
  [ -f "$data/tls/ca.pem" ] || "$bin/tallyctl" certs --dir "$data/tls" --hosts 127.0.0.1,localhost >/dev/null
  tls_node=(--tls-cert "$data/tls/node.pem" --tls-key "$data/tls/node-key.pem" --tls-ca "$data/tls/ca.pem")
  tls_ctl=(--tls-cert "$data/tls/client.pem" --tls-key "$data/tls/client-key.pem" --tls-ca "$data/tls/ca.pem")
  tls_hint="  export TALLY_TLS_CERT=$data/tls/client.pem TALLY_TLS_KEY=$data/tls/client-key.pem TALLY_TLS_CA=$data/tls/ca.pem
  # backups and restores take a node's certificate: tallyctl --tls-cert $data/tls/node.pem --tls-key $data/tls/node-key.pem backup --dir DIR
"
fi
pids=()
stop() {
  trap - INT TERM EXIT
  stopping=1
  echo "stopping tally nodes..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "stopped."
}
trap stop EXIT
trap 'stop; exit 0' INT
trap 'stop; exit 143' TERM
# The logs are appended to across runs: a marker line before each start lets
# fail show only this run's lines.
marker="=== run-local.sh: start at $(date -u +%Y-%m-%dT%H:%M:%SZ), pid $$"
for i in 1 2 3; do
  echo "$marker" >>"$data/n$i.log"
  # shellcheck disable=SC2086 # TALLYD_FLAGS is a list of flags
  "$bin/tallyd" --id "n$i" --data "$data/n$i" --shards "$shards" --bootstrap \
    --grpc "127.0.0.1:710$i" --raft "127.0.0.1:720$i" --metrics "127.0.0.1:730$i" \
    --peers "$peers" ${tls_node[@]+"${tls_node[@]}"} ${TALLYD_FLAGS:-} >>"$data/n$i.log" 2>&1 &
  pids+=($!)
done
addrs=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
# fail shows why a node did not come up and exits non-zero (the trap stops
# the others).
fail() {
  echo "tally: $1" >&2
  for i in 1 2 3; do
    echo "--- last lines of $data/n$i.log (this start):" >&2
    awk -v m="$marker" '$0 == m { n = 0; next } { l[++n] = $0 } END { for (k = (n > 5 ? n - 4 : 1); k <= n; k++) print l[k] }' "$data/n$i.log" >&2 || true
  done
  exit 1
}
# Ready when every one of this cluster's shards has a leader. Every node
# must still be running: a node that exits at start (data of another shard
# count, a data directory in use, a port taken) must not be hidden behind a
# cluster answering from elsewhere.
# Bounded by time, not tries: one tallyctl call can take its whole 1 s.
ready=
deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
  for k in 0 1 2; do
    kill -0 "${pids[$k]}" 2>/dev/null || fail "node n$((k + 1)) exited at start"
  done
  led=$("$bin/tallyctl" ${tls_ctl[@]+"${tls_ctl[@]}"} --addr "$addrs" --timeout 1s cluster 2>/dev/null | grep -cE "^[0-9]+ +n" || true)
  if [ "$led" = "$shards" ]; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || fail "no leader for every one of $shards shards after 30 s"
# Another cluster on these ports (a second 'make run') answers at once while
# this one's nodes are still failing to bind: look again a moment later.
sleep 1
for k in 0 1 2; do
  kill -0 "${pids[$k]}" 2>/dev/null || fail "node n$((k + 1)) exited at start (another cluster on these ports or this data directory?)"
done
grep -h 'WARNING: this disk' "$data"/n[123].log 2>/dev/null | tail -n 1 || true
cat <<MSG
Tally: 3 nodes, $shards shards, data under $data/ (logs: $data/n*.log)${TLS:+, mutual TLS (certificates in $data/tls)}
  node  gRPC             Raft             metrics
  n1    127.0.0.1:7101   127.0.0.1:7201   http://127.0.0.1:7301/metrics
  n2    127.0.0.1:7102   127.0.0.1:7202   http://127.0.0.1:7302/metrics
  n3    127.0.0.1:7103   127.0.0.1:7203   http://127.0.0.1:7303/metrics

Try, in another terminal:
$tls_hint  ./bin/tallyctl define-asset --program shop1 --asset POINTS --scale 0
  ./bin/tallyctl open   --program shop1 --member alice --asset POINTS
  ./bin/tallyctl credit --program shop1 --member alice --asset POINTS --amount 500
  ./bin/tallyctl debit  --program shop1 --member alice --asset POINTS --amount 120
  ./bin/tallyctl hold   --program shop1 --member alice --asset POINTS --amount 50 --ttl 15m --key order-42
  ./bin/tallyctl capture --program shop1 --member alice --hold-key order-42
  ./bin/tallyctl get    --program shop1 --member alice --asset POINTS
  ./bin/tallyctl cluster
Ctrl-C stops the cluster; 'make run' again resumes with the same data.
MSG
# Exit (and stop the others) as soon as any node exits.
# A node stopped by Ctrl-C exits 0 (the whole process group gets the signal,
# sometimes before this shell does); only a failure is worth a message.
rc=0
wait -n "${pids[@]}" || rc=$?
if [ -z "${stopping:-}" ] && [ "$rc" -ne 0 ]; then
  echo "a node exited with status $rc; see $data/n*.log" >&2
  exit "$rc"
fi
