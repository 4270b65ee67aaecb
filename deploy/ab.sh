#!/usr/bin/env bash
# One measured load run against a fresh three-node cluster, with the nodes'
# own timings over the measured window: the tool behind the A/B figures in
# docs/BENCHMARKS.md. Run it for two binaries or flag sets, alternating.
#
#   deploy/ab.sh [tally-load args...]
#   BIN=/path/to/bins TALLYD_FLAGS="--max-inflight-entries 12" SHARDS=3 \
#     deploy/ab.sh --scenario uniform --clients 256 --duration 10s --warmup 3s
#
# Environment: BIN (folder with tallyd, tallyctl, tally-load; default: build
# ./bin), TALLYD_FLAGS (extra tallyd flags), SHARDS (default 3), MEMBERS
# (default 20000), AB_PORT (first port, default 7500), AB_PROFILE=FILE (8 s
# CPU profile of n1 in the window), AB_KEEP=1 (keep the data folder), AB_TLS=1
# (mutual TLS on every link, certificates from tallyctl certs). Prints tally-load's summary, then per
# node the mean of each timing over the window (metrics scraped when the
# measured window starts and 8 s later): entry size, propose-to-apply,
# hashicorp/raft's commitTime, leader log write, follower log write, the
# AppendEntries round trip, and the share of goroutine wakeups that waited
# over 1 ms for a CPU. Every process it starts is stopped on exit.
set -euo pipefail
# tallyctl and tally-load read TALLY_TLS_* when no flag names the files; this
# script's cluster gets its TLS, if any, from its own flags.
unset TALLY_TLS_CERT TALLY_TLS_KEY TALLY_TLS_CA
cd "$(dirname "$0")/.."
for tool in curl setsid; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ab.sh: $tool not found (curl scrapes the nodes' metrics; setsid is in util-linux)" >&2; exit 2; }
done
# Pebble's memtables are 64 MiB arenas that every write inserts into at
# random: with transparent huge pages in "madvise" mode, glibc backs them
# with huge pages only when asked (glibc >= 2.35; others ignore it). Batched
# throughput +10-15% on the 2-CPU box (docs/BENCHMARKS.md, "Huge pages");
# GLIBC_TUNABLES= (empty) turns it off. Only tallyd gets it, not the load
# generator or PostgreSQL.
tunables=${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}
port=${AB_PORT:-7500}
shards=${SHARDS:-3}
if [ -z "${BIN:-}" ]; then
  BIN=$PWD/bin
  go build -o "$BIN/" ./cmd/tallyd ./cmd/tallyctl ./cmd/tally-load
fi
data=$(mktemp -d /tmp/tally-ab.XXXXXX)
pids=()   # the nodes
window=   # the subshell that scrapes the measured window
# cleanup stops what this script started: the window subshell (its curls
# have time limits), then the nodes, waiting only for those.
cleanup() {
  trap - EXIT INT TERM HUP
  # Wait only on a process that the kill found: bash's wait on a child that
  # is already gone can block (seen after a Ctrl-C with bash 5.2).
  if [ -n "$window" ] && kill -TERM "$window" 2>/dev/null; then wait "$window" 2>/dev/null || true; fi
  local live=()
  for p in "${pids[@]}"; do if kill -TERM "$p" 2>/dev/null; then live+=("$p"); fi; done
  for p in "${live[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${AB_KEEP:-}" ] || rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
peers=""; addrs=""
for i in 1 2 3; do
  peers+="${peers:+,}n$i=127.0.0.1:$((port + 10 + i))/127.0.0.1:$((port + i))"
  addrs+="${addrs:+,}127.0.0.1:$((port + i))"
done
# shellcheck source=deploy/common.sh
source deploy/common.sh
if [ -n "${AB_TLS:-}" ]; then tls_setup "$BIN/tallyctl" "$data/tls"; fi
# Each node in a session of its own (setsid): a Ctrl-C at the terminal
# reaches this script and tally-load but not the nodes, so tally-load's
# verification still finds the cluster up; the trap stops the nodes after.
for i in 1 2 3; do
  # shellcheck disable=SC2086 # TALLYD_FLAGS is a list of flags
  GLIBC_TUNABLES="$tunables" setsid "$BIN/tallyd" --id "n$i" --data "$data/n$i" --shards "$shards" --bootstrap --grpc "127.0.0.1:$((port + i))" \
    --raft "127.0.0.1:$((port + 10 + i))" --metrics "127.0.0.1:$((port + 20 + i))" --peers "$peers" --pprof \
    ${tls_node[@]+"${tls_node[@]}"} ${TALLYD_FLAGS:-} >"$data/n$i.log" 2>&1 &
  pids+=($!)
done
on_start_failure() { AB_KEEP=1; } # the message points at the data folder
cluster_ready "$BIN/tallyctl" AB_PORT
scrape() { for i in 1 2 3; do curl -s --max-time 5 "http://127.0.0.1:$((port + 20 + i))/metrics" >"$data/$1.n$i" || true; done; }
(for _ in $(seq 1 600); do grep -q 'measure\]' "$data/progress" 2>/dev/null && break; sleep 0.5; done
 scrape m0
 if [ -n "${AB_PROFILE:-}" ]; then
   curl -s --max-time 20 -o "$AB_PROFILE" "http://127.0.0.1:$((port + 21))/debug/pprof/profile?seconds=8" || true
 else
   sleep 8
 fi
 scrape m1) &
window=$!
server_pids=$(IFS=,; echo "${pids[*]}")
rc=0
run_load "$data/summary" "$data/progress" "$BIN/tally-load" ${tls_client[@]+"${tls_client[@]}"} --addrs "$addrs" --server-pids "$server_pids" \
  --members "${MEMBERS:-20000}" --verify-budget 5s "$@"
grep -E '^(throughput|latency|cpu|result)' "$data/summary" || true
exit_if_signalled
# The window's wait for the measured window is over once tally-load is: if
# that never started (tally-load failed early), stop the subshell; else let
# it finish its scrapes (bounded: 8 s and curl time limits).
if ! grep -q 'measure\]' "$data/progress" 2>/dev/null; then
  kill -TERM "$window" 2>/dev/null || true
  echo "tally-load exited $rc before its measured window:" >&2
  tail -n 5 "$data/progress" >&2
fi
if kill -0 "$window" 2>/dev/null; then wait "$window" 2>/dev/null || true; fi
window=
for i in 1 2 3; do
  [ -s "$data/m1.n$i" ] || continue
  awk -v node="n$i" '
    FNR == 1 { f++ }
    /^#/ { next }
    { name = $1; sub(/\{.*/, "", name); v[f, $1] = $2 }
    function mean(base, lbl,   s, c) {
      s = v[2, base "_sum" lbl] - v[1, base "_sum" lbl]; c = v[2, base "_count" lbl] - v[1, base "_count" lbl]
      return c > 0 ? sprintf("%.3g", s / c) : "-"
    }
    function peers(base,   k, s, c, key) {
      s = 0; c = 0
      for (key in v) { split(key, k, SUBSEP)
        if (k[1] == 2 && index(k[2], base "_sum{peer_id=") == 1) { s += v[2, k[2]] - v[1, k[2]] }
        if (k[1] == 2 && index(k[2], base "_count{peer_id=") == 1) { c += v[2, k[2]] - v[1, k[2]] } }
      return c > 0 ? sprintf("%.3g", s / c) : "-"
    }
    END {
      tot = v[2, "go_sched_latencies_seconds_count"] - v[1, "go_sched_latencies_seconds_count"]
      fast = 0
      for (key in v) { split(key, k, SUBSEP)
        if (k[1] == 2 && index(k[2], "go_sched_latencies_seconds_bucket{le=") == 1) {
          le = k[2]; gsub(/.*le="|".*/, "", le)
          if (le + 0 <= 0.001 && le + 0 > best) { best = le + 0; fast = v[2, k[2]] - v[1, k[2]] } } }
      printf "%s: entry_ops %s, propose->apply %s s, raft_commitTime %s ms, leader log write %s ms, follower log write %s ms, AppendEntries rpc %s ms, wakeups waiting >1ms %s\n",
        node, mean("tally_entry_ops", ""), mean("tally_raft_commit_apply_seconds", ""), mean("raft_commitTime", ""),
        mean("raft_leader_dispatchLog", ""), mean("raft_rpc_appendEntries_storeLogs", ""),
        peers("raft_replication_appendEntries_rpc"), (tot > 0 ? sprintf("%.1f%%", 100 * (tot - fast) / tot) : "-")
    }' "$data/m0.n$i" "$data/m1.n$i"
done
exit "$rc"
