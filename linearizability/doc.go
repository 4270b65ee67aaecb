// Package linearizability proves, under faults, that Tally stays
// linearizable, applies every operation exactly once and loses nothing.
//
// It provides:
//
//   - Model: a porcupine model of one member's accounts, one per asset,
//     with every operation the API offers on an account (credit, debit,
//     hold, capture, release, hold expiry, freeze, unfreeze, report lost,
//     report found, close, read) and
//     linked requests of several of them on either account (a recharge of
//     stored value with its bonus points), partitioned by member. Each op
//     acts on its own account, and a result must describe that one. A
//     linked request is one operation of the model: its ops apply in order
//     in one log entry, all of them or none, and when one fails it keeps its
//     code and the others get LINKED_FAILED.
//     Operations whose outcome the
//     client never learned are indeterminate: they return at +infinity and
//     the model lets them take effect at any point after their call, or
//     never. They are never dropped, and never assumed failed on the
//     client's word: after the run each is looked up in the store and
//     pinned as applied, or, if no record holds its key, as never applied
//     (an attempt still in flight then would be caught by the final reads).
//   - Cluster: three tallyd processes on 127.0.0.1 with a fault-injection
//     proxy on every directed Raft link and on the workers' links to each
//     node's gRPC listener (drop, blackhole, delay), kill -9 and restart
//     (with a skewed clock too: tallyd --unsafe-clock-offset, in builds
//     with -tags tally_unsafe), SIGSTOP/SIGCONT, and wiping a killed
//     node's data directory before its restart.
//   - Run: a seeded fault schedule (nemesis; one fault at a time, each
//     undone before the next, but for client-link faults, which touch no
//     node and run on their own schedule beside the others: AllFaults, plus the opt-in clock (which
//     needs that build; the CI profile has it) and wipe, which
//     restarts a node on an empty data directory, obeys Tally's operator
//     rule (never while a node is down or paused or does not answer, or
//     while any replica of any shard reports vote_guarded; a wipe the rule
//     holds back past wipeWait is skipped and shows in the timeline as
//     wipe-skipped) and waits, bounded, for the wiped node's replicas to
//     leave their vote guard), concurrent workers issuing
//     operations through package client with the retries a payment system
//     makes (same idempotency key; some workers also hedge: a second call
//     with the key, on the same client, while the first still waits, ending on
//     the first recorded outcome, else on both answers), on every member's two accounts: points
//     (scale 0) and stored value (scale 2, amounts in fen: every amount
//     crosses the edge as a decimal and is checked exact; capped at a
//     balance the run's recharges reach), and the checks
//     after the run: linearizability per member, conservation per shard, every
//     acknowledged operation in the record store and journal with the
//     result the client saw, each account's final posted and held
//     balances explained by its journal (the accounts are read again after
//     each listing, as holds keep expiring after the workload stops), each
//     hold settled once, each hold over 10 s past its expiry when listed
//     ended (captured, released or expired), no key applied twice, every linked request
//     stored whole or not at all, replicas equal at the same applied index,
//     no replica consistency check (tallyd --check-every) that differed or
//     failed during the run, by the nodes' logs and the final leaders'
//     comparisons, and checks seen to run and to be compared,
//     real-time order of sequence numbers and log times across the members
//     of a shard, and over all of a shard's sequence numbers (none given to
//     two keys, log time never going back), each write's log time within 2 s
//     of its calls by the wall clock, every refusal that applied nothing
//     one this workload can meet (NOT_LEADER, UNAVAILABLE, HOLD_NOT_FOUND;
//     never an op's own UNAVAILABLE, a deferral for an expiry backlog the
//     workload cannot build), no read answered as if its account did not
//     exist (ACCOUNT_NOT_FOUND, ...), every account a result or read reports the
//     one asked about with available = posted - held, every shard backed up
//     (conservation in the backup) and restored from that backup on every
//     replica, last of all, and floors that keep a run from passing by
//     doing nothing:
//     every fault kind injected, partitions, delays and client faults seen
//     to cut, hold back or delay traffic, every pair of nodes, and the
//     workers with the nodes, talking through the proxies, at least a quarter of the writes applied OK and each
//     frequent kind answered by the rules.
//   - Evidence: on failure, porcupine's HTML visualization per failing
//     account, the fault timeline, node logs and the seed, under a results
//     folder.
//
// Hold expiry is modelled in log time: every operation result carries the
// log time it applied at (TimeMs), and before an operation at log time T
// the model expires every open hold with ExpiresAt <= T, exactly as the
// ledger's ExpireHolds does at the start of every Raft entry. A read
// carries no log time, so the model lets it observe any expiry prefix
// consistent with the log times it has seen and due by the wall clock when
// it was answered (the nodes stamp log time from the same host's clock;
// without that bound a hold lost after a member's last write passed as
// expired). It sees one account, so expiries on the other can make several
// prefixes match; the earliest is kept, as every later one is reachable
// from it. A write resolved after the run as applied returns when it was
// looked up, before the final reads. Per member,
// log time and journal sequence numbers must not go backwards along the
// linearization.
//
// Running it:
//
//	go test -race -run TestChaos ./linearizability/       # CI profile (part of make test)
//	TALLY_CHAOS_SEED=1234 go test -run TestChaos ./linearizability/   # replay a seed
//	make chaos CHAOS_DURATION=30m                           # long run (cmd/tally-chaos)
//	make chaos CHAOS_ARGS=--faults=kill,pause,partition,delay,client,clock,wipe   # with wipes
//
// Results go under ./results/ (TALLY_CHAOS_RESULTS overrides it for tests):
// summary.txt and summary.json, timeline.txt, history.jsonl, the nodes'
// logs, and linearizability-<member>.html for every member whose history
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
