#!/usr/bin/env bash
# How long a follower takes to catch up: starts three nodes on 127.0.0.1
# (3 shards), stops n3, runs 15 s of load against n1 and n2, starts n3
# again and times until n3 has applied, on every shard, what n1 had when
# the load ended. The tool behind the MaxAppendEntries figures in
# docs/BENCHMARKS.md; run it for two builds, alternating.
#
#   deploy/catchup.sh BIN_DIR [batch|single]
#
# BIN_DIR holds tallyd, tallyctl and tally-load. Ports CATCHUP_PORT+1..3
# (gRPC) and +11..13 (Raft), default 7700. Every process it starts is
# stopped on exit, and its data folder removed.
set -euo pipefail
# tallyctl and tally-load read TALLY_TLS_* when no flag names the files; this
# script's clusters are plaintext.
unset TALLY_TLS_CERT TALLY_TLS_KEY TALLY_TLS_CA
command -v python3 >/dev/null 2>&1 || { echo "catchup.sh: python3 not found (it reads tallyctl's JSON and times the catch-up)" >&2; exit 2; }
bin=${1:?usage: deploy/catchup.sh BIN_DIR [batch|single]}
mode=${2:-batch}
port=${CATCHUP_PORT:-7700}
data=$(mktemp -d /tmp/tally-catchup.XXXXXX)
peers="n1=127.0.0.1:$((port + 11))/127.0.0.1:$((port + 1)),n2=127.0.0.1:$((port + 12))/127.0.0.1:$((port + 2)),n3=127.0.0.1:$((port + 13))/127.0.0.1:$((port + 3))"
addrs="127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
declare -A pid
start() {
  GLIBC_TUNABLES=${GLIBC_TUNABLES-glibc.malloc.hugetlb=1} "$bin/tallyd" --id "n$1" --data "$data/n$1" --shards 3 --bootstrap \
    --grpc "127.0.0.1:$((port + $1))" --raft "127.0.0.1:$((port + 10 + $1))" --peers "$peers" >>"$data/n$1.log" 2>&1 &
  pid[$1]=$!
}
cleanup() {
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
idx() {
  "$bin/tallyctl" --json --timeout 5s state --node "127.0.0.1:$((port + $1))" --shard "$2" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['applied_index'])"
}
start 1; start 2; start 3
up=
deadline=$((SECONDS + 20)) # by time, not tries: one tallyctl call can take its whole 1 s
while [ "$SECONDS" -lt "$deadline" ]; do
  [ "$("$bin/tallyctl" --addr "$addrs" --timeout 1s cluster 2>/dev/null | grep -cE '^[0-9]+ +n' || true)" = 3 ] && { up=1; break; }
  sleep 0.2
done
[ -n "$up" ] || { echo "no leader for every shard within 20 s" >&2; exit 1; }
kill -TERM "${pid[3]}"; wait "${pid[3]}" 2>/dev/null || true; unset "pid[3]"
case "$mode" in
  batch) args=(--scenario uniform --clients 16 --batch 1000) ;;
  single) args=(--scenario uniform --clients 256) ;;
  *) echo "mode: batch or single" >&2; exit 2 ;;
esac
# The load's own verification fails (it wants every replica, n3's too), so
# its status is not used: the shards must have moved on instead.
"$bin/tally-load" --addrs "127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))" "${args[@]}" --members 20000 \
  --duration 15s --warmup 1s --verify-ops 0 >"$data/load.out" 2>&1 || true
want=()
for s in 0 1 2; do
  want[s]=$(idx 1 "$s")
  [ "${want[s]}" -gt 100 ] || { echo "shard $s did not move under the load:" >&2; tail -n 5 "$data/load.out" >&2; exit 1; }
done
t0=$(date +%s.%N)
start 3
for s in 0 1 2; do
  deadline=$((SECONDS + 300))
  until [ "$(idx 3 "$s" 2>/dev/null || echo 0)" -ge "${want[s]}" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "n3 not caught up on shard $s after 300 s" >&2; exit 1; }
    sleep 0.1
  done
done
t1=$(date +%s.%N)
echo "$mode: n3 caught up to applied index ${want[*]} (shards 0-2) in $(python3 -c "print(round($t1 - $t0, 2))") s"
