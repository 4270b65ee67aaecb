// Package linearizability proves, under faults, that Tally stays
// linearizable, applies every operation exactly once and loses nothing.
//
// It provides:
//
//   - Model: a porcupine model of one account with every operation the API
//     offers (credit, debit, hold, capture, release, hold expiry, freeze,
//     unfreeze, read) and linked requests of several of them on one account,
//     partitioned by account. A linked request is one operation of the
//     model: its ops apply in order in one log entry, all of them or none,
//     and when one fails it keeps its code and the others get LINKED_FAILED.
//     Operations whose outcome the
//     client never learned are indeterminate: they return at +infinity and
//     the model lets them take effect at any point after their call, or
//     never. They are never dropped and never assumed failed.
//   - Cluster: three tallyd processes on 127.0.0.1 with a fault-injection
//     proxy on every directed Raft link (drop, blackhole, delay), kill -9
//     and restart, SIGSTOP/SIGCONT.
//   - Run: a seeded fault schedule (nemesis), concurrent workers issuing
//     operations through package client with the retries a payment system
//     makes (same idempotency key), on accounts of points (scale 0) and of
//     stored value (scale 2, amounts in fen: every amount crosses the edge
//     as a decimal and is checked exact), and the checks after the run:
//     linearizability per account, conservation per shard, every
//     acknowledged operation in the record store and journal with the
//     result the client saw, no key applied twice, every linked request
//     stored whole or not at all, replicas equal at the same applied index.
//   - Evidence: on failure, porcupine's HTML visualization per failing
//     account, the fault timeline, node logs and the seed, under a results
//     folder.
//
// Hold expiry is modelled in log time: every operation result carries the
// log time it applied at (TimeMs), and before an operation at log time T
// the model expires every open hold with ExpiresAt <= T, exactly as the
// ledger's ExpireHolds does at the start of every Raft entry. A read
// carries no log time, so the model lets it observe any expiry prefix
// consistent with the log times it has seen (held amounts are > 0, so at
// most one prefix matches what was read). Per account, log time and
// journal sequence numbers must not go backwards along the linearization.
//
// Running it:
//
//	go test -race -run TestChaos ./linearizability/       # CI profile (part of make test)
//	TALLY_CHAOS_SEED=1234 go test -run TestChaos ./linearizability/   # replay a seed
//	make chaos CHAOS_DURATION=30m                           # long run (cmd/tally-chaos)
//
// Results go under ./results/ (TALLY_CHAOS_RESULTS overrides it for tests):
// summary.txt and summary.json, timeline.txt, history.jsonl, the nodes'
// logs, and linearizability-<account>.html for every account whose history
// is not linearizable. The nodes' data directories are kept only when a
// check fails. A porcupine check that times out fails the run too: an
// undecided history is not proven linearizable (long runs keep histories
// short with fresh accounts every --epoch).
//
// Invariants of the harness: every process it starts is killed on Close
// (process-group SIGKILL, also after SIGSTOP); every loop is bounded in
// count and time; it binds 127.0.0.1 only; a run is reproducible from its
// seed up to the scheduling of goroutines and processes.
package linearizability
