#!/usr/bin/env bash
# The standard benchmark: builds Tally, starts a fresh three-node cluster on
# 127.0.0.1 (fsync on, replication 3) in a temporary data directory, runs the
# standard cases with tally-load (each verifies its acks and conservation
# afterwards), stops the cluster, runs the PostgreSQL baseline
# (../shared/bench/pg_bench.sh: PostgreSQL 15, fsync on) in the same run, and
# prints every Tally figure with its ratio to PostgreSQL's.
#
# Cases (closed loop unless said; 100,000 members):
#   uniform-single      256 clients, one op per request
#   uniform-coalesce    256 clients, one op per request, client coalescing on
#   uniform-batch       16 clients, 1000 ops per request
#   flash-sale          256 clients, one op per request, coalescing on:
#                       90% of ops on 10 hot members and the campaign budget
#   open-half           open loop at half the best single-op rate (latency
#                       from the intended start: no coordinated omission)
#   reads               256 clients, linearizable GetAccount only
#   reads-coalesce      the same with client coalescing (GetAccounts batches per shard)
#
# Environment: BENCH_SECS (measured seconds per case, default 15),
# BENCH_WARMUP (default 3s), BENCH_OUT (results directory, default
# results/bench/<time>), BENCH_PORT (first port, default 7400: gRPC
# BENCH_PORT+1..3, Raft +11..13, metrics +21..23), SHARDS (default 3),
# PG_SECS and PG_CLIENTS (default 15 and 64), BENCH_RATE (open-half's rate
# instead of half the best single-op figure of this run), BENCH_TALLYD_FLAGS
# (extra tallyd flags, for A/B runs), BENCH_LOAD_FLAGS (extra tally-load
# flags for every case, e.g. "--max-inflight-per-shard 2"), BENCH_CASES (a subset, e.g.
# "uniform-single flash-sale"), BENCH_SKIP_PG=1 (no baseline),
# BENCH_NOBUILD=1 (use the binaries already in bin/: for a machine without Go),
# BENCH_TLS=1 (mutual TLS on every link, certificates from tallyctl certs),
# BENCH_CPUS="<n1> <n2> <n3> <load>" (taskset CPU lists, e.g. "0-3 4-7 8-11
# 12-15": each node and the load generator on their own cores, as on separate
# machines; the PostgreSQL baseline then runs unpinned, on every CPU, unless
# BENCH_PG_CPUS gives it a CPU list too, e.g. "0-3,12-15": one node's cores
# for the server and the load generator's for pgbench).
# BENCH_STALL="<s>:<ms>" stops all three nodes (SIGSTOP) for <ms> milliseconds
# <s> seconds into each case's measured window, as a stall of the whole
# machine would (docs/BENCHMARKS.md, "Stall tolerance").
# With a tallyd that has --pprof, a 10 s CPU profile of node n1 is taken
# during each case (BENCH_PROFILE=0 turns that off).
# Every node's /metrics is saved after each case, and the nodes' logs (Raft at
# info: elections, snapshots) when the run ends.
# Exit status: non-zero if any case failed its checks or could not run.
set -euo pipefail
# tallyctl and tally-load read TALLY_TLS_* when no flag names the files; this
# script's cluster gets its TLS, if any, from its own flags.
unset TALLY_TLS_CERT TALLY_TLS_KEY TALLY_TLS_CA
cd "$(dirname "$0")/.."
for tool in curl setsid; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: $tool not found (curl takes the nodes' metrics and profiles; setsid is in util-linux)" >&2; exit 2; }
done
# Pebble's memtables are 64 MiB arenas that every write inserts into at
# random: with transparent huge pages in "madvise" mode, glibc backs them
# with huge pages only when asked (glibc >= 2.35; others ignore it). Batched
# throughput +10-15% on the 2-CPU box (docs/BENCHMARKS.md, "Huge pages");
# GLIBC_TUNABLES= (empty) turns it off. Only tallyd gets it, not the load
# generator or PostgreSQL.
tunables=${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}
secs=${BENCH_SECS:-15}
warmup=${BENCH_WARMUP:-3s}
out=${BENCH_OUT:-results/bench/$(date +%Y%m%d-%H%M%S)}
port=${BENCH_PORT:-7400}
# Three shards, one leader per node: on two shared cores, fewer Raft groups
# pack more operations into each log entry (one fsync and one AppendEntries
# round trip for more of them). A/B in docs/BENCHMARKS.md: 3 shards beat 8 in
# every latency-bound case and matched it batched. tallyd's default stays 8.
shards=${SHARDS:-3}
cases=${BENCH_CASES:-uniform-single uniform-coalesce uniform-batch flash-sale open-half reads reads-coalesce}
bin=$PWD/bin
mkdir -p "$out" "$bin"
out=$(cd "$out" && pwd)

if [ "${BENCH_NOBUILD:-0}" = 1 ]; then
  echo "== using the binaries in $bin (BENCH_NOBUILD=1)"
else
  echo "== build"
  go build -o "$bin/" ./cmd/tallyd ./cmd/tallyctl ./cmd/tally-load
fi

# pin N: the command prefix that runs process N (1-3 a node, 4 the load
# generator) on its BENCH_CPUS set; empty when unpinned.
read -r -a cpus <<<"${BENCH_CPUS:-}"
if [ -n "${BENCH_CPUS:-}" ] && [ "${#cpus[@]}" != 4 ]; then echo "BENCH_CPUS needs four CPU lists" >&2; exit 2; fi
pin() { if [ -n "${BENCH_CPUS:-}" ]; then echo "taskset -c ${cpus[$1 - 1]}"; fi; }

data=$(mktemp -d /tmp/tally-bench.XXXXXX)
pids=()    # the nodes
helpers=() # the running case's profile and stall subshells
# stop_helpers stops the profile and stall subshells (a stall subshell left
# running could later STOP and CONT reused pids), then lets any node that a
# stopped stall left stopped go on.
stop_helpers() {
  # Wait only on a process that the kill found: bash's wait on a child that
  # is already gone can block (seen after a Ctrl-C with bash 5.2).
  local live=()
  for p in "${helpers[@]}"; do if kill -TERM "$p" 2>/dev/null; then live+=("$p"); fi; done
  for p in "${live[@]}"; do wait "$p" 2>/dev/null || true; done
  helpers=()
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
}
stop_cluster() {
  # CONT first: a node left stopped by BENCH_STALL would never act on TERM.
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  trap - EXIT INT TERM HUP
  stop_helpers
  stop_cluster
  cp "$data"/n*.log "$out/" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

pprof_flag=
profile=${BENCH_PROFILE:-1}
if [ "$profile" = 1 ] && { "$bin/tallyd" --help 2>&1 || true; } | grep -q -- '-pprof'; then pprof_flag=--pprof; else profile=0; fi

addrs=""
peers=""
for i in 1 2 3; do
  peers+="${peers:+,}n$i=127.0.0.1:$((port + 10 + i))/127.0.0.1:$((port + i))"
  addrs+="${addrs:+,}127.0.0.1:$((port + i))"
done
# shellcheck source=deploy/common.sh
source deploy/common.sh
if [ -n "${BENCH_TLS:-}" ]; then tls_setup "$bin/tallyctl" "$data/tls"; fi
echo "== cluster: 3 nodes, $shards shards, data $data, gRPC $addrs${BENCH_TLS:+, mutual TLS}"
# Each node in a session of its own (setsid): a Ctrl-C at the terminal
# reaches this script and tally-load but not the nodes, so tally-load's
# verification still finds the cluster up; the trap stops the nodes after.
for i in 1 2 3; do
  # shellcheck disable=SC2086 # BENCH_TALLYD_FLAGS is a list of flags
  $(pin "$i") setsid env GLIBC_TUNABLES="$tunables" "$bin/tallyd" --id "n$i" --data "$data/n$i" --shards "$shards" --bootstrap \
    --grpc "127.0.0.1:$((port + i))" --raft "127.0.0.1:$((port + 10 + i))" \
    --metrics "127.0.0.1:$((port + 20 + i))" --peers "$peers" $pprof_flag --log-level info ${tls_node[@]+"${tls_node[@]}"} ${BENCH_TALLYD_FLAGS:-} >"$data/n$i.log" 2>&1 &
  pids+=($!)
done
cluster_ready "$bin/tallyctl" BENCH_PORT
server_pids=$(IFS=,; echo "${pids[*]}")

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm); $(nproc) CPUs; $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "go: $(go version 2>/dev/null || echo "none (BENCH_NOBUILD)")"
  echo "cpus: ${BENCH_CPUS:-unpinned} (n1 n2 n3 load)"
  echo "tallyd flags: --shards $shards ${BENCH_TALLYD_FLAGS:-}"
  echo "tallyd GLIBC_TUNABLES: ${tunables:-none} (only a cgo build reads it: $(go version -m "$bin/tallyd" 2>/dev/null | grep -o 'CGO_ENABLED=[01]' || echo 'cgo unknown')); transparent huge pages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)"
  echo "tally-load flags: ${BENCH_LOAD_FLAGS:-}"
  if [ -n "${BENCH_TLS:-}" ]; then echo "tls: mutual TLS on every link"; else echo "tls: off"; fi
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

# json_num FILE KEY: a top-level number of a tally-load JSON report.
json_num() { sed -n "s/^  \"$2\": \([-0-9.e+]*\),\{0,1\}$/\1/p" "$1" | head -1; }
json_bool() { sed -n "s/^  \"$2\": \(true\|false\),\{0,1\}$/\1/p" "$1" | head -1; }
# json_ver FILE KEY: a number in the report's verification object.
json_ver() { sed -n "s/^    \"$2\": \([-0-9.e+]*\),\{0,1\}$/\1/p" "$1" | head -1; }

failed=0
best_single=0
run_case() {
  local name=$1; shift
  echo
  echo "== $name: tally-load $*"
  local prof_pid=
  if [ "$profile" = 1 ]; then
    # Profile the measured window: wait for its first progress line (setup
    # and warmup take a while and vary).
    (for _ in $(seq 1 600); do grep -q 'measure\]' "$out/$name.progress" 2>/dev/null && break; sleep 0.5; done
     curl -s --max-time 25 -o "$out/$name.n1.cpu.prof" "http://127.0.0.1:$((port + 21))/debug/pprof/profile?seconds=10" || true) &
    prof_pid=$!
    helpers+=("$prof_pid")
  fi
  local stall_pid=
  if [ -n "${BENCH_STALL:-}" ]; then
    local at=${BENCH_STALL%%:*} ms=${BENCH_STALL#*:}
    (for _ in $(seq 1 600); do grep -q 'measure\]' "$out/$name.progress" 2>/dev/null && break; sleep 0.5; done
     sleep "$at"
     kill -STOP "${pids[@]}"
     sleep "$(awk -v ms="$ms" 'BEGIN {print ms / 1000}')"
     kill -CONT "${pids[@]}"
     echo "stalled all nodes for ${ms} ms at $(date -u +%T.%N)" >>"$out/$name.stall") &
    stall_pid=$!
    helpers+=("$stall_pid")
  fi
  local rc=0
  # tally-load's stdout is its summary at the end: shown once it exits.
  # shellcheck disable=SC2046,SC2086 # pin's prefix and BENCH_LOAD_FLAGS are lists of words
  run_load "$out/$name.txt" "$out/$name.progress" $(pin 4) "$bin/tally-load" ${tls_client[@]+"${tls_client[@]}"} --addrs "$addrs" --duration "${secs}s" \
    --warmup "$warmup" --server-pids "$server_pids" --json "$out/$name.json" --plot "$out/$name.html" ${BENCH_LOAD_FLAGS:-} "$@"
  cat "$out/$name.txt"
  exit_if_signalled
  # The load is over: a stall now would only stall the next case. A profile
  # whose measured window began is let finish (curl's time limit bounds it);
  # one still waiting for a window that never began (tally-load failed
  # early) is stopped, as it would otherwise poll for 300 s.
  if [ -n "$stall_pid" ]; then kill -TERM "$stall_pid" 2>/dev/null || true; fi
  if [ -n "$prof_pid" ] && ! grep -q 'measure\]' "$out/$name.progress" 2>/dev/null; then kill -TERM "$prof_pid" 2>/dev/null || true; fi
  for p in $prof_pid $stall_pid; do if kill -0 "$p" 2>/dev/null; then wait "$p" 2>/dev/null || true; fi; done
  helpers=()
  # A stall stopped between its STOP and CONT leaves the nodes stopped.
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  # Each node's counters after the case (snapshots, write stalls, Raft
  # timings): diff two cases' files to see what one case did.
  for i in 1 2 3; do curl -s --max-time 10 -o "$out/$name.n$i.metrics" "http://127.0.0.1:$((port + 20 + i))/metrics" || true; done
  if [ "$rc" != 0 ]; then
    echo "!! $name: tally-load exited $rc"
    tail -3 "$out/$name.progress"
    failed=1
  fi
}

for c in $cases; do
  case $c in
    uniform-single) run_case "$c" --scenario uniform --clients 256 ;;
    uniform-coalesce) run_case "$c" --scenario uniform --clients 256 --coalesce ;;
    uniform-batch) run_case "$c" --scenario uniform --clients 16 --batch 1000 ;;
    flash-sale) run_case "$c" --scenario flash-sale --clients 256 --coalesce ;;
    open-half)
      for f in "$out/uniform-single.json" "$out/uniform-coalesce.json"; do
        [ -f "$f" ] || continue
        v=$(json_num "$f" ops_per_sec)
        best_single=$(awk -v a="$best_single" -v b="${v:-0}" 'BEGIN {print (b > a) ? b : a}')
      done
      rate=$(awk -v b="$best_single" 'BEGIN {r = int(b / 2); print (r < 100) ? 100 : r}')
      rate=${BENCH_RATE:-$rate}
      run_case "$c" --scenario uniform --clients 2048 --coalesce --rate "$rate" ;;
    reads) run_case "$c" --scenario uniform --clients 256 --mix read=100 ;;
    reads-coalesce) run_case "$c" --scenario uniform --clients 256 --mix read=100 --coalesce ;;
    *) echo "unknown case $c" >&2; failed=1 ;;
  esac
done

echo
echo "== stopping the cluster"
stop_cluster

pg_uniform=
pg_hotspot=
if [ "${BENCH_SKIP_PG:-0}" != 1 ]; then
  echo
  echo "== PostgreSQL baseline: ../shared/bench/pg_bench.sh ${PG_SECS:-15} ${PG_CLIENTS:-64}"
  pg_pin=()
  if [ -n "${BENCH_PG_CPUS:-}" ]; then pg_pin=(taskset -c "$BENCH_PG_CPUS"); echo "(PostgreSQL and pgbench on CPUs $BENCH_PG_CPUS)"; fi
  if "${pg_pin[@]}" bash ../shared/bench/pg_bench.sh "${PG_SECS:-15}" "${PG_CLIENTS:-64}" | tee "$out/pg.txt"; then
    pg_uniform=$(sed -n 's/^pg uniform .* tps=\([0-9.]*\).*/\1/p' "$out/pg.txt")
    pg_hotspot=$(sed -n 's/^pg hotspot .* tps=\([0-9.]*\).*/\1/p' "$out/pg.txt")
  else
    echo "!! pg_bench.sh failed"
    failed=1
  fi
fi

# ratio X BASE: X / BASE to one decimal, or "-" without a baseline.
ratio() { awk -v x="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && x != "") printf "%.1fx", x / b; else print "-" }'; }
echo
echo "== summary ($out)"
printf '%-17s %11s %9s %9s %9s %9s %6s %7s %-10s %-8s %s\n' case ops/s p50_ms p99_ms p999_ms errors lost inv_ok "vs pg" "pg case" "acks checked"
for c in $cases; do
  f="$out/$c.json"
  [ -f "$f" ] || { printf '%-17s %11s\n' "$c" "no result"; continue; }
  ops=$(json_num "$f" ops_per_sec)
  errs=$(awk '/^  "errors": \{$/ {on=1; next} on && /^  \}/ {on=0} on {gsub(/[^0-9]/, "", $2); s += $2} END {print s + 0}' "$f")
  base=$pg_uniform; bcase=uniform
  if [ "$c" = flash-sale ]; then base=$pg_hotspot; bcase=hotspot; fi
  printf '%-17s %11.0f %9s %9s %9s %9s %6s %7s %-10s %-8s %s\n' "$c" "$ops" "$(json_num "$f" p50_ms)" "$(json_num "$f" p99_ms)" \
    "$(json_num "$f" p999_ms)" "$errs" "$(json_num "$f" lost_acks)" "$(json_bool "$f" invariant_ok)" "$(ratio "$ops" "$base")" "$bcase" \
    "$(json_ver "$f" verified_ops)/$(json_ver "$f" acked_ops)"
done | tee "$out/summary.txt"
[ -n "$pg_uniform" ] && echo "PostgreSQL: uniform $pg_uniform tps, hotspot $pg_hotspot tps (${PG_CLIENTS:-64} clients)" | tee -a "$out/summary.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
exit "$failed"
