#!/usr/bin/env bash
# Rolling upgrade and downgrade against a real older build, by hand (not part of
# `make test`: it builds an old revision). Usage:
#   deploy/upgrade-check.sh [OLD_REV]    # default 2a671b3, the last build before rules versions
# Builds OLD_REV's and this checkout's tallyd, then on 127.0.0.1 (ports
# UPGRADE_PORT+1..3 for gRPC, +11..13 for Raft; default 10400, below the
# 12000 and up that internal/freeport draws test ports from):
#   A. two new nodes and one old: shards stay at rules version 1 and every
#      replica has the same state hash; the old node is upgraded: every shard
#      is raised to the newest version, replicas still equal, and the new
#      rules apply; a raised node cannot go back (the old build refuses its data).
#   B. three new nodes held with --max-version 1: one goes back to the old
#      build on its data, runs, takes writes, and stays equal to the others.
#   C. from rules version 2 (V2_REV, default 8894e9e, the last build whose
#      newest version is 2): two new nodes and one V2_REV node stay at 2, and
#      a hold that expires then gets no EXPIRE_HOLD journal entry; once the
#      old node is upgraded every shard rises to the newest version and a
#      hold that expires gets its entry; replicas equal throughout.
#   D. from rules version 3 (V3_REV, default 9929075, the last build whose
#      newest version is 3): two new nodes and one V3_REV node stay at 3; once
#      the old node is upgraded every shard rises to the newest version;
#      replicas equal throughout.
# Needs git, go and python3. Exits non-zero on the first failed check.
set -euo pipefail
# tallyctl and tally-load read TALLY_TLS_* when no flag names the files; this
# script's clusters are plaintext.
unset TALLY_TLS_CERT TALLY_TLS_KEY TALLY_TLS_CA
cd "$(dirname "$0")/.."
for tool in git go python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "upgrade-check.sh: $tool not found (needs git, go and python3)" >&2; exit 2; }
done
old_rev=${1:-2a671b3}
v2_rev=${V2_REV:-8894e9e}
v3_rev=${V3_REV:-9929075}
newest=4 # ledger.MaxVersion of this checkout
port=${UPGRADE_PORT:-10400}
work=$(mktemp -d /tmp/tally-upgrade.XXXXXX)
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/data*/n*.log; do echo "--- $f" >&2; tail -n 3 "$f" >&2; done; exit 1; }

echo "== building $old_rev and this checkout"
git archive "$old_rev" | tar -x -C "$work" --one-top-level=oldsrc
(cd "$work/oldsrc" && go build -o "$work/old/" ./cmd/tallyd)
git archive "$v2_rev" | tar -x -C "$work" --one-top-level=v2src
(cd "$work/v2src" && go build -o "$work/v2/" ./cmd/tallyd)
git archive "$v3_rev" | tar -x -C "$work" --one-top-level=v3src
(cd "$work/v3src" && go build -o "$work/v3/" ./cmd/tallyd)
go build -o "$work/new/" ./cmd/tallyd ./cmd/tallyctl
ctl="$work/new/tallyctl"
peers="n1=127.0.0.1:$((port + 11))/127.0.0.1:$((port + 1)),n2=127.0.0.1:$((port + 12))/127.0.0.1:$((port + 2)),n3=127.0.0.1:$((port + 13))/127.0.0.1:$((port + 3))"
addrs="127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
data=
start() { # node, build (old|v2|v3|new), extra flags
  local i=$1 b=$2; shift 2
  "$work/$b/tallyd" --id "n$i" --data "$data/n$i" --shards 3 --bootstrap --grpc "127.0.0.1:$((port + i))" \
    --raft "127.0.0.1:$((port + 10 + i))" --peers "$peers" --log-level info "$@" >>"$data/n$i.log" 2>&1 &
  pid[$i]=$!
}
stopn() { kill -TERM "${pid[$1]}"; wait "${pid[$1]}" 2>/dev/null || true; unset "pid[$1]"; }
c() { "$ctl" --addr "$addrs" --timeout 20s "$@"; }
# state NODE SHARD FIELD: one field of a node's view of a shard; fails the
# run when the node does not answer (a check must never pass on no answer).
state() {
  local v
  v=$("$ctl" --json --timeout 5s state --node "127.0.0.1:$((port + $1))" --shard "$2" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['$3'])") || v=
  [ -n "$v" ] || fail "n$1 shard $2: no $3"
  echo "$v"
}
# equal: every shard's replicas have one state hash and applied index (waits up to 15 s).
equal() {
  for s in 0 1 2; do
    for _ in $(seq 1 30); do
      views=
      for i in 1 2 3; do
        idx=$(state "$i" "$s" applied_index) || exit 1
        hash=$(state "$i" "$s" state_hash) || exit 1
        views+="$idx $hash"$'\n'
      done
      [ "$(printf '%s' "$views" | sort -u | wc -l)" = 1 ] && continue 2
      sleep 0.5
    done
    fail "shard $s: replicas differ"
  done
}
# versions: every node's version of every shard, as "n1:v,v,v n2:..."
versions() {
  local out='' a b c
  for i in 1 2 3; do
    a=$(state "$i" 0 version) || exit 1
    b=$(state "$i" 1 version) || exit 1
    c=$(state "$i" 2 version) || exit 1
    out+="n$i:$a,$b,$c "
  done
  echo "$out"
}

# versions_are WANT WHAT: the versions, read again for up to 10 s while a
# node does not answer (an election), must be WANT.
versions_are() {
  local got=''
  for _ in $(seq 1 20); do
    got=$(versions) && break
    sleep 0.5
  done
  [ "$got" = "$1" ] || fail "$2: $got"
}

# linked KEY1 AMOUNT1 KEY2: a linked credit pair on member m1; prints the first
# op's code (empty if there is none: the comparison then fails). tallyctl exits
# non-zero when an op is refused, which is what some checks expect, so its
# status is ignored and its errors go to $work/linked.err.
linked() {
  printf '{"kind":"CREDIT","program":"shop","member":"m1","asset":"PTS","amount":"%s","key":"%s"}\n{"kind":"CREDIT","program":"shop","member":"m1","asset":"PTS","amount":"1","key":"%s"}\n' "$2" "$1" "$3" |
    "$ctl" --addr "$addrs" --json --timeout 20s batch --linked 2>>"$work/linked.err" |
    python3 -c "import json,sys; d=json.load(sys.stdin); r=d['results'] if isinstance(d,dict) else d; print(r[0]['code'])" || true
}
setup() {
  local up='' deadline=$((SECONDS + 20)) # by time, not tries: a cluster call can take seconds
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$("$ctl" --addr "$addrs" --timeout 1s cluster 2>/dev/null | grep -cE '^[0-9]+ +n' || true)" = 3 ] && { up=1; break; }
    sleep 0.2
  done
  [ -n "$up" ] || fail "no leader for every shard within 20 s"
  c define-asset --program shop --asset PTS --scale 0 --key define >/dev/null
  for m in m1 m2 m3 m4 m5 m6; do
    c open --program shop --member "$m" --asset PTS --key "open-$m" >/dev/null
    c credit --program shop --member "$m" --asset PTS --amount 10 --key "credit-$m" >/dev/null
  done
}

echo "== A: rolling upgrade (n3 runs $old_rev)"
data=$work/dataA; mkdir -p "$data"
start 1 new; start 2 new; start 3 old
setup
sleep 5 # more than two of the leaders' version checks
versions_are "n1:1,1,1 n2:1,1,1 n3:0,0,0 " "versions with an old node"
equal
[ "$(linked credit-m1 10 a1)" = OK ] || fail "version 1: an unlinked op resent linked should replay"
stopn 3; start 3 new
raised="n1:$newest,$newest,$newest n2:$newest,$newest,$newest n3:$newest,$newest,$newest "
for _ in $(seq 1 40); do [ "$(versions)" = "$raised" ] && break; sleep 0.5; done
[ "$(versions)" = "$raised" ] || fail "not raised after the upgrade: $(versions)"
equal
c credit --program shop --member m1 --asset PTS --amount 3 --key fresh >/dev/null
[ "$(linked fresh 3 a2)" = IDEMPOTENCY_KEY_REUSED ] || fail "version $newest: an unlinked op resent linked should be refused"
[ "$(linked credit-m1 10 a3)" = OK ] || fail "version $newest: a version-1 record should still replay"
equal
# Going back: n2's Raft log is in codec version 2 (it was never held), which
# the old build refuses first, deleting nothing; without that log, the raised
# state (a version-2 meta) is refused by itself.
stopn 2
start 2 old; sleep 3
if kill -0 "${pid[2]}" 2>/dev/null; then fail "the old build runs on a version-2 log"; fi
unset "pid[2]"
grep -q "this build cannot read.*never deleting it" "$data/n2.log" || fail "the old build stopped, but not for the log codec"
rm -rf "$data/n2/raft"
: >"$data/n2.log"
start 2 old; sleep 3
if kill -0 "${pid[2]}" 2>/dev/null; then fail "the old build runs on raised state"; fi
unset "pid[2]"
grep -q "bad length" "$data/n2.log" || fail "the old build stopped, but not for the raised state: $(tail -n 2 "$data/n2.log")"
echo "ok: versions stayed 1 beside the old node, rose to $newest after it, replicas equal throughout; the old build refuses the new log codec and, by itself, the raised state"
stopn 1; stopn 3

echo "== B: held with --max-version 1, one node back to $old_rev"
data=$work/dataB; mkdir -p "$data"
for i in 1 2 3; do start "$i" new --max-version 1; done
setup
sleep 5
versions_are "n1:1,1,1 n2:1,1,1 n3:1,1,1 " "versions while held"
stopn 2; start 2 old; sleep 3
kill -0 "${pid[2]}" 2>/dev/null || fail "the old build does not run on held data"
c credit --program shop --member m2 --asset PTS --amount 5 --key after-downgrade >/dev/null
equal
echo "ok: held nodes stayed at version 1 and one went back to the old build, equal to the others"
stopn 1; stopn 2; stopn 3

# expire KEY: a 1 s hold of 1 on m3, then waits (up to 20 s) until expiry
# has released it.
expire() {
  c hold --program shop --member m3 --asset PTS --amount 1 --ttl 1s --key "$1" >/dev/null
  local held=
  for _ in $(seq 1 40); do
    held=$(c --json get --program shop --member m3 --asset PTS | python3 -c "import json,sys; print(json.load(sys.stdin)['held'])") || held=
    [ "$held" = 0 ] && return 0
    sleep 0.5
  done
  fail "hold $1 not released by expiry after 20 s (held $held)"
}
# expiries KEY: how many EXPIRE_HOLD entries of m3's journal name hold KEY.
expiries() {
  c --json journal --program shop --member m3 --asset PTS --limit 100 |
    python3 -c "import json,sys; print(sum(1 for e in json.load(sys.stdin)['entries'] if e['op']['kind'] == 'EXPIRE_HOLD' and e['op']['key'] == '\x1fexpiry:$1'))"
}

echo "== C: rolling upgrade from rules version 2 (n3 runs $v2_rev)"
data=$work/dataC; mkdir -p "$data"
start 1 new; start 2 new; start 3 v2
setup
sleep 5
versions_are "n1:2,2,2 n2:2,2,2 n3:2,2,2 " "versions with a version-2 node"
expire h1
[ "$(expiries h1)" = 0 ] || fail "version 2: a hold expiry was journaled"
equal
stopn 3; start 3 new
for _ in $(seq 1 40); do [ "$(versions)" = "$raised" ] && break; sleep 0.5; done
[ "$(versions)" = "$raised" ] || fail "not raised from version 2 after the upgrade: $(versions)"
expire h2
[ "$(expiries h2)" = 1 ] || fail "version $newest: a hold expiry was not journaled once"
[ "$(expiries h1)" = 0 ] || fail "version $newest: the hold that expired under version 2 got an entry"
equal
echo "ok: versions stayed 2 beside the version-2 node, rose to $newest after it; hold expiries journaled only from then; replicas equal throughout"
stopn 1; stopn 2; stopn 3

echo "== D: rolling upgrade from rules version 3 (n3 runs $v3_rev)"
data=$work/dataD; mkdir -p "$data"
start 1 new; start 2 new; start 3 v3
setup
sleep 5
versions_are "n1:3,3,3 n2:3,3,3 n3:3,3,3 " "versions with a version-3 node"
expire d1
c debit --program shop --member m4 --asset PTS --amount 4 --key d-debit >/dev/null
equal
stopn 3; start 3 new
for _ in $(seq 1 40); do [ "$(versions)" = "$raised" ] && break; sleep 0.5; done
[ "$(versions)" = "$raised" ] || fail "not raised from version 3 after the upgrade: $(versions)"
expire d2
[ "$(expiries d2)" = 1 ] || fail "version $newest: a hold expiry was not journaled once"
c debit --program shop --member m4 --asset PTS --amount 4 --key d-debit2 >/dev/null
equal
echo "ok: versions stayed 3 beside the version-3 node, rose to $newest after it; replicas equal throughout"
stopn 1; stopn 2; stopn 3
echo "PASS"
