package linearizability

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// Limits of the checks after a run.
const (
	// convergeTimeout bounds waiting for every replica of every shard to
	// reach the same applied index once faults are healed.
	convergeTimeout = 90 * time.Second
	// resolveTimeout bounds resolving one operation with GetOperation
	// (retries included) and reading one journal page.
	resolveTimeout = 20 * time.Second
	// resolveWorkers is how many GetOperation calls run at once.
	resolveWorkers = 8
	// journalPage is the ListJournal page size (the server's maximum).
	journalPage = 1000
	// maxJournalPages bounds paging through one member's journal.
	maxJournalPages = 1000
	// maxFindings bounds the findings kept per check; the count is kept.
	maxFindings = 20
)

// CheckResult is the outcome of one check.
type CheckResult struct {
	Name     string   `json:"name"`
	OK       bool     `json:"ok"`
	Detail   string   `json:"detail"`
	Findings []string `json:"findings,omitempty"`
	// Unknown lists what could not be decided in time (porcupine timeouts,
	// members left unchecked when the run's context ended); each also fails
	// the check.
	Unknown []string `json:"unknown,omitempty"`
}

type findings struct {
	n    int
	list []string
}

func (f *findings) addf(format string, args ...any) {
	f.n++
	if len(f.list) < maxFindings {
		f.list = append(f.list, fmt.Sprintf(format, args...))
	}
}

// merge adds o's findings to f's.
func (f *findings) merge(o *findings) {
	f.n += o.n
	for _, s := range o.list {
		if len(f.list) < maxFindings {
			f.list = append(f.list, s)
		}
	}
}

func (f *findings) result(name, okDetail string) CheckResult {
	if f.n == 0 {
		return CheckResult{Name: name, OK: true, Detail: okDetail}
	}
	return CheckResult{Name: name, Detail: fmt.Sprintf("%d violation(s)", f.n), Findings: f.list}
}

// ReplicaState is one node's view of one shard.
type ReplicaState struct {
	Node           string `json:"node"`
	AppliedIndex   uint64 `json:"applied_index"`
	StateHash      string `json:"state_hash"`
	ConservationOK bool   `json:"conservation_ok"`
	Error          string `json:"error,omitempty"`
	// Leader, CheckIndex and Compared: whether the node led the shard,
	// the index of its newest consistency check (0: none since it
	// started), and, from a leader, its newest comparison with each other
	// replica's.
	Leader     bool                  `json:"leader,omitempty"`
	CheckIndex uint64                `json:"check_index,omitempty"`
	Compared   []client.ReplicaCheck `json:"compared,omitempty"`
}

// replicaStates asks node i (of ClusterSize) for its replica of a shard:
// a cluster's ShardState calls, or a test's fake.
type replicaStates interface {
	ShardState(ctx context.Context, node int, shard uint32) (client.ShardState, error)
	NodeID(node int) string
}

// clusterStates asks a running cluster's nodes.
type clusterStates struct {
	cl *client.Client
	c  *Cluster
}

func (s clusterStates) ShardState(ctx context.Context, node int, shard uint32) (client.ShardState, error) {
	return s.cl.ShardState(ctx, s.c.GRPCAddr(node), shard)
}

func (s clusterStates) NodeID(node int) string { return s.c.NodeID(node) }

// checkReplicas waits until every replica of each shard reports the same
// applied index, then compares their state hashes and conservation checks.
// Two replicas at the same applied index with different hashes fail at
// once, whether or not the third has caught up; so does a replica that
// answers without a hash (a hash of nothing would match any other).
func checkReplicas(ctx context.Context, rs replicaStates, shards int) (CheckResult, CheckResult, map[int][]ReplicaState) {
	var rep, cons findings
	final := map[int][]ReplicaState{}
	for shard := 0; shard < shards; shard++ {
		deadline := time.Now().Add(convergeTimeout)
		var last []ReplicaState
		converged := false
		for time.Now().Before(deadline) && ctx.Err() == nil {
			last = last[:0]
			byIndex := map[uint64][]byte{}
			mismatch := ""
			for i := 0; i < ClusterSize; i++ {
				st, err := rs.ShardState(ctx, i, uint32(shard))
				r := ReplicaState{Node: rs.NodeID(i)}
				switch {
				case err != nil:
					r.Error = err.Error()
				case len(st.StateHash) == 0:
					r.AppliedIndex = st.AppliedIndex
					mismatch = fmt.Sprintf("applied index %d (%s answered no state hash)", st.AppliedIndex, r.Node)
				default:
					r.AppliedIndex, r.StateHash, r.ConservationOK = st.AppliedIndex, hex.EncodeToString(st.StateHash), st.ConservationOK
					r.Leader, r.CheckIndex, r.Compared = st.Leader, st.CheckIndex, st.ReplicaChecks
					if h, ok := byIndex[st.AppliedIndex]; ok && !bytes.Equal(h, st.StateHash) {
						mismatch = fmt.Sprintf("applied index %d", st.AppliedIndex)
					}
					byIndex[st.AppliedIndex] = st.StateHash
					if !st.ConservationOK {
						cons.addf("shard %d on %s (applied %d): %s", shard, r.Node, st.AppliedIndex, st.ConservationError)
					}
				}
				last = append(last, r)
			}
			if mismatch != "" {
				rep.addf("shard %d: replicas differ at %s: %s", shard, mismatch, describeReplicas(last))
				converged = true
				break
			}
			if len(byIndex) == 1 && allAnswered(last) {
				converged = true
				break
			}
			time.Sleep(pollInterval)
		}
		final[shard] = append([]ReplicaState(nil), last...)
		if !converged {
			rep.addf("shard %d: replicas did not reach one applied index within %s: %s", shard, convergeTimeout, describeReplicas(last))
		}
	}
	return rep.result("replicas-equal", fmt.Sprintf("every shard's %d replicas have the same state hash at the same applied index", ClusterSize)),
		cons.result("conservation", "every replica of every shard: balances of each asset sum to zero"), final
}

// checkFailureMarkers start what a node logs when a replica consistency
// check fails (node/consistency.go): a leader that found a replica's state
// different (divergedMessage), or a replica's walk that failed or found
// its own state broken (observeCheck, compareReplica).
var checkFailureMarkers = []string{"REPLICA STATE DIFFERS", "consistency check failed", "consistency check: the shard's state"}

// checkReplicaChecks fails on any replica consistency check that differed
// or failed during the run, as the nodes logged it (logPaths: their logs,
// which survive restarts), or at its end, as the final leaders report it
// (final: checkReplicas' states, as awaitComparisons left them). It also
// fails when the checks cannot have worked (every: tallyd's
// --check-every; 0 or less, no such floor):
//   - no replica of any shard reports a check, though a shard applied at
//     least 4*every entries (a node's checks are kept in memory, so every
//     node would have to have restarted since its shards' last check
//     index);
//   - a leader reports no comparison although another replica's newest
//     check is at the leader's own newest index (it compares within 5 s).
func checkReplicaChecks(final map[int][]ReplicaState, logPaths []string, every int64) CheckResult {
	var f findings
	matched := 0
	checked, busy := false, false
	for shard := 0; shard < len(final); shard++ {
		for _, r := range final[shard] {
			checked = checked || r.CheckIndex > 0
			busy = busy || (every > 0 && r.AppliedIndex >= 4*uint64(every))
			for _, c := range r.Compared {
				switch {
				case c.Error != "":
					f.addf("shard %d: leader %s: %s's check at index %d failed: %s", shard, r.Node, c.NodeID, c.Index, c.Error)
				case !c.Match:
					f.addf("shard %d: leader %s found %s's state different at index %d", shard, r.Node, c.NodeID, c.Index)
				default:
					matched++
				}
			}
		}
		if every > 0 && comparisonDue(final[shard]) {
			f.addf("shard %d: its leader reports no replica comparison, though another replica's newest check is at the leader's newest index: %s",
				shard, describeChecks(final[shard]))
		}
	}
	if busy && !checked {
		f.addf("no replica reports a consistency check, though a shard applied at least %d entries (--check-every %d)", 4*every, every)
	}
	for _, p := range logPaths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.addf("%s: could not look for failed checks: %v", p, err)
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			for _, m := range checkFailureMarkers {
				if strings.Contains(line, m) {
					f.addf("%s: %s", filepath.Base(p), line)
					break
				}
			}
		}
	}
	return f.result("replica-checks", fmt.Sprintf("no consistency check differed or failed during the run; the final leaders' newest comparisons: %d, all equal", matched))
}

// comparisonDue reports whether a shard's leader should report a
// comparison: another replica's newest check is at the leader's newest
// index, and the leader reports none.
func comparisonDue(states []ReplicaState) bool {
	for _, l := range states {
		if !l.Leader || l.CheckIndex == 0 || len(l.Compared) > 0 {
			continue
		}
		for _, r := range states {
			if r.Node != l.Node && r.CheckIndex == l.CheckIndex {
				return true
			}
		}
	}
	return false
}

func describeChecks(states []ReplicaState) string {
	var parts []string
	for _, r := range states {
		parts = append(parts, fmt.Sprintf("%s (leader %v) check %d, %d compared", r.Node, r.Leader, r.CheckIndex, len(r.Compared)))
	}
	return strings.Join(parts, "; ")
}

// awaitComparisons waits, at most compareWait, until no shard's leader
// owes a comparison (comparisonDue), updating final with what the nodes
// report.
func awaitComparisons(ctx context.Context, rs replicaStates, final map[int][]ReplicaState, every int64) {
	if every <= 0 {
		return
	}
	deadline := time.Now().Add(compareWait)
	for shard := 0; shard < len(final); shard++ {
		states := final[shard]
		for comparisonDue(states) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(pollInterval)
			for i := range states {
				if i >= ClusterSize {
					break
				}
				if st, err := rs.ShardState(ctx, i, uint32(shard)); err == nil {
					states[i].Leader, states[i].CheckIndex, states[i].Compared = st.Leader, st.CheckIndex, st.ReplicaChecks
				}
			}
		}
	}
}

// compareWait bounds awaitComparisons.
const compareWait = 20 * time.Second

// backupTimeout bounds one shard's backup, and then its restore, in
// checkBackupRestore.
const backupTimeout = 60 * time.Second

// checkBackupRestore backs up every shard of the healed cluster and
// restores it from that backup. Each backup must pass the leader's check
// with conservation, and its restore must reach every replica: each one's
// Raft log must pass the index the restore took (it sits past a hole in
// the leader's log, so a replica gets there only by installing it), and a
// replica at the backup's applied index must hold the backup's state.
// It runs after every other check, on a cluster whose workload has
// stopped: a restore discards what was applied after the backup (here,
// hold expiries at most, which the restored holds then repeat).
func checkBackupRestore(ctx context.Context, cl *client.Client, rs replicaStates, shards int) CheckResult {
	var f findings
	for shard := 0; shard < shards; shard++ {
		var b bytes.Buffer
		bctx, cancel := context.WithTimeout(ctx, backupTimeout)
		h, err := cl.Backup(bctx, shard, &b)
		cancel()
		if err != nil {
			f.addf("shard %d: backup: %v", shard, err)
			continue
		}
		if !h.ConservationOK {
			f.addf("shard %d: the backup's state (applied %d) breaks conservation", shard, h.AppliedIndex)
		}
		rctx, cancel := context.WithTimeout(ctx, backupTimeout)
		res, err := cl.Restore(rctx, h, bytes.NewReader(b.Bytes()))
		cancel()
		if err != nil {
			f.addf("shard %d: restore of its backup (applied %d): %v", shard, h.AppliedIndex, err)
			continue
		}
		if res.StateHash != h.StateHash || res.AppliedIndex != h.AppliedIndex {
			f.addf("shard %d: restored applied %d hash %s, the backup is applied %d hash %s", shard, res.AppliedIndex, res.StateHash, h.AppliedIndex, h.StateHash)
		}
		deadline := time.Now().Add(convergeTimeout)
		for {
			var pending, wrong []string
			for i := 0; i < ClusterSize; i++ {
				st, err := rs.ShardState(ctx, i, uint32(shard))
				switch {
				case err != nil:
					pending = append(pending, fmt.Sprintf("%s: %v", rs.NodeID(i), err))
				case st.RaftLastIndex < res.RaftIndex:
					pending = append(pending, fmt.Sprintf("%s: raft last index %d < %d", rs.NodeID(i), st.RaftLastIndex, res.RaftIndex))
				case st.AppliedIndex == h.AppliedIndex && hex.EncodeToString(st.StateHash) != h.StateHash:
					wrong = append(wrong, fmt.Sprintf("%s: state hash %x at the backup's applied index %d", rs.NodeID(i), st.StateHash, h.AppliedIndex))
				case st.AppliedIndex < h.AppliedIndex:
					wrong = append(wrong, fmt.Sprintf("%s: applied index %d, below the backup's %d", rs.NodeID(i), st.AppliedIndex, h.AppliedIndex))
				}
			}
			if len(wrong) > 0 {
				f.addf("shard %d: after the restore: %s", shard, strings.Join(wrong, "; "))
				break
			}
			if len(pending) == 0 {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				f.addf("shard %d: the restore did not reach every replica within %s: %s", shard, convergeTimeout, strings.Join(pending, "; "))
				break
			}
			time.Sleep(pollInterval)
		}
	}
	return f.result("backup-restore", fmt.Sprintf("every shard backed up (conservation ok) and restored from it on all %d replicas", ClusterSize))
}

func allAnswered(rs []ReplicaState) bool {
	for _, r := range rs {
		if r.Error != "" {
			return false
		}
	}
	return true
}

func describeReplicas(rs []ReplicaState) string {
	var parts []string
	for _, r := range rs {
		if r.Error != "" {
			parts = append(parts, fmt.Sprintf("%s: error %s", r.Node, r.Error))
			continue
		}
		h := r.StateHash
		if len(h) > 12 {
			h = h[:12]
		}
		parts = append(parts, fmt.Sprintf("%s: applied %d hash %s", r.Node, r.AppliedIndex, h))
	}
	return strings.Join(parts, ", ")
}

// resolution is what GetOperation says about one recorded write.
type resolution struct {
	found bool
	entry client.JournalEntry
	err   error
}

// operationLookup is what resolving writes needs of a cluster;
// *client.Client implements it, and tests use a fake.
type operationLookup interface {
	GetOperation(ctx context.Context, program, member, key string) (bool, client.JournalEntry, error)
}

// keysOf returns the idempotency keys of a write: its own, or one per op of
// a linked request.
func keysOf(in Input) []Input {
	if in.Kind == KindLinked {
		return in.Ops
	}
	return []Input{in}
}

// resolveAll looks up every key of every write: out[i][j] is the j-th key
// of entries[i] (keysOf), nil for reads.
func resolveAll(ctx context.Context, cl operationLookup, entries []Entry) [][]resolution {
	out := make([][]resolution, len(entries))
	type job struct{ i, j int }
	work := make(chan job)
	var wg sync.WaitGroup
	for w := 0; w < resolveWorkers; w++ {
		wg.Go(func() {
			for jb := range work {
				in := keysOf(entries[jb.i].Input)[jb.j]
				rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
				found, entry, err := cl.GetOperation(rctx, Program, in.Member, in.Key)
				cancel()
				out[jb.i][jb.j] = resolution{found: found, entry: entry, err: err}
			}
		})
	}
	for i, e := range entries {
		if e.Input.Kind == KindRead {
			continue
		}
		out[i] = make([]resolution, len(keysOf(e.Input)))
		for j := range out[i] {
			work <- job{i, j}
		}
	}
	close(work)
	wg.Wait()
	return out
}

// checkExactlyOnce resolves every write with GetOperation and checks that
// the stored outcome is the one the client saw: same code, sequence and
// log time for acknowledged operations, nothing stored for operations the
// client was told were certainly not applied, and the stored operation is
// the one sent under that key. Indeterminate operations found in the store
// get their stored outcome (the caller pins their return time to the end of
// the lookups, by which they had applied); those not
// found become not applied. This runs after the replicas converged and the
// workload's clients closed, so nothing can apply them any more (one that
// still did would show in the journal and the final reads); leaving them
// indeterminate would let the model explain a read of a write that never
// committed (a dirty read) as that write applying and then being undone.
// It updates entries in place.
func checkExactlyOnce(ctx context.Context, cl operationLookup, entries []Entry) (CheckResult, int, int) {
	var f findings
	res := resolveAll(ctx, cl, entries)
	applied, notApplied := 0, 0
	for i := range entries {
		e := &entries[i]
		if e.Input.Kind == KindRead {
			continue
		}
		ins := keysOf(e.Input)
		failed := false
		found := 0
		for j, r := range res[i] {
			in := ins[j]
			switch {
			case r.err != nil:
				f.addf("%s: GetOperation failed: %v", in.Key, r.err)
				failed = true
			case r.found && !sameOp(in, r.entry.Op):
				f.addf("%s: the store holds a different operation under this key: %+v", in.Key, r.entry.Op)
				failed = true
			case r.found:
				found++
			}
		}
		if failed {
			continue
		}
		switch e.Output.Status {
		case Known:
			outs := []Output{e.Output}
			if e.Input.Kind == KindLinked {
				outs = e.Output.Ops
				if len(outs) != len(ins) {
					f.addf("%s: acknowledged with %d results for %d ops", describeKeys(ins), len(outs), len(ins))
					continue
				}
			}
			for j, r := range res[i] {
				in, out := ins[j], outs[j]
				switch {
				case !r.found:
					f.addf("%s: acknowledged (%s, seq %d) but not in the record store", in.Key, out.Code, out.Seq)
				case r.entry.Result.Code != out.Code || r.entry.Result.Seq != out.Seq || r.entry.Result.TimeMs != out.TimeMs:
					f.addf("%s: client saw %s seq %d t=%d, store has %s seq %d t=%d", in.Key,
						out.Code, out.Seq, out.TimeMs, r.entry.Result.Code, r.entry.Result.Seq, r.entry.Result.TimeMs)
				default:
					// The record is the result the client was sent: the
					// account after the op and what it moved must agree too.
					if st := outputOf(r.entry.Result, in.Member); !sameEffect(st, out) {
						f.addf("%s: client saw %s, store has %s", in.Key, describeEffect(out), describeEffect(st))
					}
				}
			}
		case NotApplied:
			for j, r := range res[i] {
				if r.found {
					f.addf("%s: client was told %s (certainly not applied) but the store has %s seq %d", ins[j].Key,
						e.Output.Code, r.entry.Result.Code, r.entry.Result.Seq)
				}
			}
		case Indeterminate:
			switch found {
			case len(res[i]):
				if e.Input.Kind == KindLinked {
					rs := make([]client.Result, len(res[i]))
					for j, r := range res[i] {
						rs[j] = r.entry.Result
					}
					e.Output = linkedOutput(rs, ins)
				} else {
					e.Output = outputOf(res[i][0].entry.Result, ins[0].Member)
				}
				e.Output.Replayed = false
				e.Resolved = true
				applied++
			case 0:
				e.Output = Output{Status: NotApplied, Code: e.Output.Code}
				e.Resolved = true
				notApplied++
			default:
				// A linked request is recorded in one log entry, all of it
				// or nothing: part of it is a broken all-or-none. Left
				// indeterminate, for the model to judge as well.
				f.addf("%s: linked request partly recorded: %d of its %d keys are in the store", describeKeys(ins), found, len(ins))
			}
		}
	}
	return f.result("exactly-once", "every acknowledged write is stored with the outcome the client saw; "+
		"no write the client was told failed is stored; every linked request is stored whole or not at all"), applied, notApplied
}

// sameMinor reports whether d is amount minor units of asset.
func sameMinor(d decimal.Decimal, amount int64, asset string) bool {
	scale, ok := scaleOf(asset)
	return ok && minorUnits(d, scale) == amount
}

// checkFaults checks that the faults happened: every configured kind was
// injected at least FaultRounds times without error, some of each
// partition, delay and client fault hindered traffic (one may legitimately
// find none: two followers of a third node's shards exchange nothing), and
// every pair of nodes, and the workers with the nodes, exchanged traffic
// through the proxies. Without it a run whose faults did nothing, say
// because Raft traffic bypassed the proxies, passed: nothing else notices.
func checkFaults(cfg Config, events []TimelineEvent, silentPairs []string) CheckResult {
	var f findings
	counts, effective := map[FaultKind]int{}, map[FaultKind]int{}
	for _, ev := range events {
		if ev.Err != "" {
			f.addf("%s (%s) at %.3fs: %s", ev.Kind, ev.What, float64(ev.AtNs)/1e9, ev.Err)
			continue
		}
		counts[ev.Kind]++
		if !ev.NoEffect {
			effective[ev.Kind]++
		}
	}
	for _, k := range cfg.Faults {
		if counts[k] < cfg.FaultRounds {
			f.addf("%d faults of kind %s injected, want >= %d", counts[k], k, cfg.FaultRounds)
		}
		if (k == FaultPartition || k == FaultDelay || k == FaultClient) && counts[k] > 0 && effective[k] == 0 {
			f.addf("none of the %d faults of kind %s hindered any traffic", counts[k], k)
		}
	}
	for _, l := range silentPairs {
		f.addf("%s: no traffic through the proxies, so faults on these links did nothing", l)
	}
	return f.result("faults", fmt.Sprintf("every kind injected >= %d times, partitions, delays and client faults with an effect; every node pair's links and the clients' links carried traffic", cfg.FaultRounds))
}

// minOKShare is the least share of writes that must end OK (checkWorkload):
// faults make some fail, but a run where most do says little (seed 119 of
// 2026-11-24 had 65%).
const minOKShare = 0.25

// kindFloor: a write kind sent at least this often must have been answered
// on its merits at least once (checkWorkload). Not OK: a close is refused
// BALANCE_NOT_ZERO nearly always, by design.
const kindFloor = 20

// checkWorkload checks that the history exercised the system: enough of
// the writes applied (OK), every kind sent often was answered by the rules
// (a result, not a refusal before the log), and reads were answered. A
// cluster that refused every write at its edge used to pass every other
// check (nothing applied is trivially linearizable).
func checkWorkload(entries []Entry) CheckResult {
	var f findings
	sent, known := map[Kind]int{}, map[Kind]int{}
	writes, okWrites, reads, answered := 0, 0, 0, 0
	for _, e := range entries {
		k := e.Input.Kind
		if k == KindRead {
			reads++
			if e.Output.Status == Known {
				answered++
			}
			continue
		}
		writes++
		sent[k]++
		if e.Output.Status == Known {
			known[k]++
			if e.Output.Code == ledger.CodeOK {
				okWrites++
			}
		}
	}
	if float64(okWrites) < minOKShare*float64(writes) {
		f.addf("only %d of %d writes applied OK (want >= %.0f%%)", okWrites, writes, 100*minOKShare)
	}
	for k, n := range sent {
		if n >= kindFloor && known[k] == 0 {
			f.addf("none of %d %s writes was answered by the rules", n, k)
		}
	}
	if reads > 0 && answered == 0 {
		f.addf("none of %d reads was answered", reads)
	}
	return f.result("workload", fmt.Sprintf("%d of %d writes applied OK, every frequent kind answered by the rules; %d of %d reads answered",
		okWrites, writes, answered, reads))
}

// legitimateRefusals are the request-level codes with which this workload's
// writes may be refused without effect (NotApplied): NOT_LEADER (answered
// before proposing), UNAVAILABLE that the client calls certainly not
// applied (a refusal the node marked not_applied before proposal, its
// queue full or its shutdown, or a call given up before any attempt could
// apply), and HOLD_NOT_FOUND from the edge, which the model judges (the
// hold must not exist then). The workload sends only well-formed ops on
// open accounts of defined assets, so any other refusal at the edge
// (INSUFFICIENT_FUNDS, UNKNOWN_ASSET, ACCOUNT_NOT_FOUND, INVALID_AMOUNT,
// ...) is the edge deciding what only the rules may, or a wrong answer:
// "no effect" alone, which the model checks, would let a server refuse
// payable debits.
var legitimateRefusals = map[ledger.Code]bool{
	ledger.CodeNotLeader:    true,
	ledger.CodeUnavailable:  true,
	ledger.CodeHoldNotFound: true,
}

// wrongReadCodes are the codes a read of this workload's accounts can only
// get by a wrong answer: a replica that answers from state older than the
// account's opening, say. A transport failure or a timeout (UNAVAILABLE,
// NOT_LEADER, INTERNAL from a broken connection) stays a failed read.
var wrongReadCodes = map[ledger.Code]bool{
	ledger.CodeAccountNotFound: true,
	ledger.CodeUnknownAsset:    true,
	ledger.CodeInvalidArgument: true,
	ledger.CodeWrongShard:      true,
}

// checkRefusals judges the codes of the writes refused without effect
// (NotApplied), as the model cannot: only legitimateRefusals may refuse a
// write. It also fails on any op that the rules answered UNAVAILABLE
// (deferred while its shard releases a backlog of more than
// ledger.MaxExpiriesPerEntry expired holds, rules version 4), counted apart
// from request-level UNAVAILABLE: this workload opens a few holds a second
// per member and settles most of them, so no shard can build such a
// backlog, and the answer is unexplained. Writes resolved after the run are
// skipped: their lookup, not a code, says they did not apply. A failed
// read constrains nothing in the model, but one answered with a code that
// says the account is not there (wrongReadCodes) is a wrong answer, not a
// failure: every account is opened before the workload starts.
func checkRefusals(entries []Entry) CheckResult {
	var f findings
	refused := map[ledger.Code]int{}
	opUnavailable := 0
	for _, e := range entries {
		if e.Input.Kind == KindRead {
			if e.Output.Status == Indeterminate && wrongReadCodes[e.Output.Code] {
				f.addf("read of %s/%s answered %s, but the account was opened before the workload (err: %s)",
					e.Input.Member, e.Input.Asset, e.Output.Code, e.Err)
			}
			continue
		}
		if e.Resolved {
			continue
		}
		name := e.Input.Key
		if e.Input.Kind == KindLinked {
			name = "linked request " + describeKeys(e.Input.Ops)
		}
		byRules := e.OpUnavailable
		if e.Output.Status == Known {
			for _, o := range append([]Output{e.Output}, e.Output.Ops...) {
				if o.Code == ledger.CodeUnavailable {
					byRules++
					break
				}
			}
		}
		if byRules > 0 {
			opUnavailable++
			f.addf("%s (%s %s): the op itself was answered UNAVAILABLE %d time(s), a deferral for a backlog of over %d expired holds "+
				"(rules version 4) that this workload cannot build: unexplained", name, e.Input.Kind, e.Input.Member, byRules, ledger.MaxExpiriesPerEntry)
			continue
		}
		if e.Output.Status != NotApplied {
			continue
		}
		refused[e.Output.Code]++
		if !legitimateRefusals[e.Output.Code] {
			f.addf("%s (%s %s): refused with %s and certainly not applied; in this workload only NOT_LEADER, UNAVAILABLE "+
				"before proposal and HOLD_NOT_FOUND may refuse a write (err: %s)", name, e.Input.Kind, e.Input.Member, e.Output.Code, e.Err)
		}
	}
	return f.result("refusals", fmt.Sprintf("%d writes refused without effect, each with NOT_LEADER, UNAVAILABLE or HOLD_NOT_FOUND (%s); "+
		"no op answered UNAVAILABLE by the rules", sum(refused), formatCodes(refused)))
}

// sum is the total of counts.
func sum[K comparable](counts map[K]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// formatCodes renders counts by code, sorted.
func formatCodes(counts map[ledger.Code]int) string {
	if len(counts) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(counts))
	for c, n := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", c, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// checkShardOrder checks real-time order across the members of a shard,
// which the per-member histories cannot: a write that was called after
// another write of its shard returned must have a later journal sequence
// number, and no earlier log time. Sequence numbers and log time are per
// shard, so an inversion between two members would otherwise go unseen.
// Writes with a known result and a sequence number count (linked requests
// by their last op); a write resolved after the run returned when it was
// looked up.
func checkShardOrder(entries []Entry, shards int) CheckResult {
	type w struct {
		call, ret   int64
		seq, timeMs int64
		key         string
	}
	byShard := make([][]w, shards)
	for _, e := range entries {
		if e.Input.Kind == KindRead || e.Output.Status != Known || e.ReturnNs == ReturnNever {
			continue
		}
		seq, key := e.Output.Seq, e.Input.Key
		if e.Input.Kind == KindLinked && len(e.Output.Ops) > 0 {
			seq, key = e.Output.Ops[len(e.Output.Ops)-1].Seq, e.Input.Ops[len(e.Input.Ops)-1].Key
		}
		if seq == 0 {
			continue
		}
		s := ledger.ShardOf(Program, e.Input.Member, shards)
		byShard[s] = append(byShard[s], w{e.CallNs, e.ReturnNs, int64(seq), e.Output.TimeMs, key})
	}
	var f findings
	checked := 0
	for s, ws := range byShard {
		byCall := slices.Clone(ws)
		slices.SortFunc(byCall, func(a, b w) int { return cmp.Compare(a.call, b.call) })
		byRet := ws
		slices.SortFunc(byRet, func(a, b w) int { return cmp.Compare(a.ret, b.ret) })
		var maxSeq, maxTime w // of the writes returned so far (by their seq, by their log time)
		r := 0
		for _, x := range byCall {
			for ; r < len(byRet) && byRet[r].ret < x.call; r++ {
				if byRet[r].seq > maxSeq.seq {
					maxSeq = byRet[r]
				}
				if byRet[r].timeMs > maxTime.timeMs {
					maxTime = byRet[r]
				}
			}
			checked++
			if maxSeq.key != "" && x.seq <= maxSeq.seq {
				f.addf("shard %d: %s (seq %d) was sent after %s (seq %d) returned", s, x.key, x.seq, maxSeq.key, maxSeq.seq)
			}
			if maxTime.key != "" && x.timeMs < maxTime.timeMs {
				f.addf("shard %d: %s (log time %d) was sent after %s (log time %d) returned", s, x.key, x.timeMs, maxTime.key, maxTime.timeMs)
			}
		}
	}
	logged := checkShardLog(entries, shards, &f)
	return f.result("shard-order", fmt.Sprintf("%d writes: each one sent after another of its shard returned has a later seq and no earlier log time; "+
		"%d results with a seq: none shares a seq with another key, and log time never decreases along each shard's seq", checked, logged))
}

// checkShardLog adds to f what breaks the order of each shard's log as the
// results show it, whatever their real-time order: every result with a
// sequence number (each op of a linked request, writes resolved after the
// run too), sorted by it, must have a non-decreasing log time, and no
// sequence number may be given to two keys. The per-member histories see
// one member's writes only, and checkShardOrder's real-time rule only
// writes that did not overlap, so two concurrent writes of two members
// could otherwise run log time backwards. It returns how many results it
// compared.
func checkShardLog(entries []Entry, shards int, f *findings) int {
	type logged struct {
		seq    uint64
		timeMs int64
		key    string
	}
	byShard := make([][]logged, shards)
	for _, e := range entries {
		if e.Input.Kind == KindRead || e.Output.Status != Known {
			continue
		}
		s := ledger.ShardOf(Program, e.Input.Member, shards)
		if e.Input.Kind != KindLinked {
			if e.Output.Seq != 0 {
				byShard[s] = append(byShard[s], logged{e.Output.Seq, e.Output.TimeMs, e.Input.Key})
			}
			continue
		}
		for j, o := range e.Output.Ops {
			if o.Seq != 0 && j < len(e.Input.Ops) {
				byShard[s] = append(byShard[s], logged{o.Seq, o.TimeMs, e.Input.Ops[j].Key})
			}
		}
	}
	n := 0
	for s, ls := range byShard {
		slices.SortFunc(ls, func(a, b logged) int {
			return cmp.Or(cmp.Compare(a.seq, b.seq), cmp.Compare(a.key, b.key))
		})
		n += len(ls)
		for i := 1; i < len(ls); i++ {
			prev, cur := ls[i-1], ls[i]
			switch {
			case cur.seq == prev.seq && cur.key != prev.key:
				f.addf("shard %d: seq %d was given to both %s and %s", s, cur.seq, prev.key, cur.key)
			case cur.timeMs < prev.timeMs:
				f.addf("shard %d: %s (seq %d) has log time %d, before %s (seq %d, log time %d)", s,
					cur.key, cur.seq, cur.timeMs, prev.key, prev.seq, prev.timeMs)
			}
		}
	}
	return n
}

// writeClockSlackMs is how far a write's log time may lie outside the wall
// clock of its call and its last answer (checkWriteTimes). The nodes stamp
// log time from this host's clock when they propose, after the request
// arrived and before the answer left, so only reading one clock in
// different processes separates them (microseconds), plus rounding to ms.
// Two seconds is generous, many times any such skew, and still far below
// what the model would need to notice a wrong time: holds of the workload
// live seconds, and a leader stamping entries 10 s ahead expires them at
// once (a clock step on the host during a run would also trip it, which is
// worth knowing).
const writeClockSlackMs = 2_000

// checkWriteTimes checks that every write's log time lies within the wall
// clock of the write: no earlier than its first call (a replayed result
// carries the first application's time, after the first call began) and no
// later than its last answer. Nothing else bounds it: the model only keeps
// one member's log time from decreasing, so a leader whose clock runs ahead
// expires holds early and passes. A write resolved after the run has no
// upper bound (it may have applied after its last answer); entries without
// wall times (hand-made histories) are skipped.
func checkWriteTimes(entries []Entry) CheckResult {
	var f findings
	checked := 0
	for _, e := range entries {
		if e.Input.Kind == KindRead || e.Output.Status != Known || e.CallWallMs == 0 {
			continue
		}
		outs, keys := []Output{e.Output}, []string{e.Input.Key}
		if e.Input.Kind == KindLinked {
			outs, keys = e.Output.Ops, make([]string, len(e.Output.Ops))
			for j := range keys {
				if j < len(e.Input.Ops) {
					keys[j] = e.Input.Ops[j].Key
				}
			}
		}
		for j, o := range outs {
			if o.Seq == 0 {
				continue // not recorded: no log time to bound
			}
			checked++
			switch {
			case o.TimeMs < e.CallWallMs-writeClockSlackMs:
				f.addf("%s (seq %d): log time %d is %d ms before its first call (wall clock %d)", keys[j], o.Seq,
					o.TimeMs, e.CallWallMs-o.TimeMs, e.CallWallMs)
			case !e.Resolved && e.ReturnWallMs != 0 && o.TimeMs > e.ReturnWallMs+writeClockSlackMs:
				f.addf("%s (seq %d): log time %d is %d ms after its last answer (wall clock %d)", keys[j], o.Seq,
					o.TimeMs, o.TimeMs-e.ReturnWallMs, e.ReturnWallMs)
			}
		}
	}
	return f.result("write-times", fmt.Sprintf("%d write results: log time within %d ms of the wall clock between the first call and the last answer",
		checked, writeClockSlackMs))
}

// pinResolved sets the return time of every write resolved as applied
// (checkExactlyOnce) to lookedNs, when the lookups had ended: it had
// applied by then, so before the final reads. Left at +infinity, the model
// could place it after the final reads and so explain one that missed its
// effect (a lost hold or freeze).
func pinResolved(entries []Entry, lookedNs int64) {
	for i := range entries {
		if entries[i].Resolved && entries[i].Output.Status == Known {
			entries[i].ReturnNs = lookedNs
		}
	}
}

// describeKeys names the keys of ins.
func describeKeys(ins []Input) string {
	keys := make([]string, len(ins))
	for i, in := range ins {
		keys[i] = in.Key
	}
	return strings.Join(keys, "+")
}

func sameOp(in Input, op client.Op) bool {
	if op.Member != in.Member || op.IdempotencyKey != in.Key {
		return false
	}
	want := toClientOp(in)
	return op.Kind == want.Kind && op.Asset == want.Asset && op.HoldKey == want.HoldKey && op.Amount.Equal(want.Amount) &&
		op.HoldTTL == want.HoldTTL
}

// journalLister is what checkJournal needs of a cluster; *client.Client
// implements it, and tests use a fake.
type journalLister interface {
	ListJournal(ctx context.Context, program, member, asset string, pageSize int, beforeSeq uint64) ([]client.JournalEntry, uint64, error)
}

// accountName names member's account of asset in findings and in
// checkJournal's finalPosted.
func accountName(member, asset string) string { return member + "/" + asset }

// accountReader reads member's account of asset now (linearizably), in the
// workload's minor units.
type accountReader func(ctx context.Context, member, asset string) (posted, held int64, err error)

// journalListings bounds how often checkJournal lists one member's journal
// while the member's balances keep changing under it.
const journalListings = 5

// checkJournal lists every member's journal and checks that no key and no
// sequence number appears twice, that every acknowledged successful write
// is in it with the sequence the client saw, that nothing is in it that the
// history does not account for (every entry is a successful write of the
// history, after resolution), that each account's final posted balance
// (finalPosted, by accountName) is the sum of its journal's postings, and
// that its final held balance (finalHeld) is what its journal's holds left
// held: from rules version 3 a hold's expiry is journaled too, so the
// journal explains every change of the held balance, and a hold is
// captured, released or expired once.
//
// Holds keep expiring after the workload stops, so a journal listed after
// the final reads can hold an expiry they did not see. With reread (nil:
// the finals are taken as current) the member's accounts are read again
// after each listing, and the listing counts only when they are as before
// it (after the workload only expiries change them, and those only lower
// the held balance, so equal reads on both sides pin the listing's state).
func checkJournal(ctx context.Context, cl journalLister, reread accountReader, entries []Entry, members []string, finalPosted, finalHeld map[string]int64) CheckResult {
	var f findings
	byKey := writesByKey(entries)
	seenKey := map[string]bool{}
	seenSeq := map[[2]uint64]string{} // (shard, seq) -> key
	total, expiries, overdue := 0, 0, 0
	for _, m := range members {
		posted, held := map[string]int64{}, map[string]int64{} // m's finals by asset
		for _, a := range assetScales {
			name := accountName(m, a.code)
			if v, ok := finalPosted[name]; ok {
				posted[a.code] = v
			}
			if v, ok := finalHeld[name]; ok {
				held[a.code] = v
			}
		}
		var p *journalPass
		for listing := 1; ; listing++ {
			p = listJournal(ctx, cl, m, byKey, seenKey, seenSeq)
			if reread == nil {
				break
			}
			changed, err := rereadAccounts(ctx, reread, m, posted, held)
			if !changed && err == nil {
				break
			}
			if listing == journalListings {
				if err != nil {
					p.f.addf("%s: reading its accounts again after listing its journal: %v", m, err)
				} else {
					p.f.addf("%s: balances still changing after %d listings of its journal", m, journalListings)
				}
				break
			}
		}
		f.merge(&p.f)
		total += p.total
		expiries += p.expiries
		overdue += p.overdue
		for k := range p.keys {
			seenKey[k] = true
		}
		maps.Copy(seenSeq, p.seqs)
		for _, a := range assetScales {
			name := accountName(m, a.code)
			if fp, ok := posted[a.code]; ok && p.posted[a.code] != fp {
				f.addf("%s: final posted balance %d minor units, but the journal's postings sum to %d", name, fp, p.posted[a.code])
			}
			if fh, ok := held[a.code]; ok && p.held[a.code] != fh {
				f.addf("%s: final held balance %d minor units, but the journal's holds leave %d held", name, fh, p.held[a.code])
			}
		}
	}
	for key, e := range byKey {
		if e.Output.Status == Known && e.Output.Code == ledger.CodeOK && !seenKey[key] {
			f.addf("%s: acknowledged OK (seq %d) but missing from the journal", key, e.Output.Seq)
		}
	}
	return f.result("journal", fmt.Sprintf("%d journal entries (%d hold expiries): no key or seq twice, every acknowledged success present, "+
		"final balances equal the journal's postings and holds; %d holds over %d s past their expiry, each ended",
		total, expiries, overdue, expiredHoldSlackMs/1000))
}

// rereadAccounts reads m's accounts named in posted and held again and
// reports whether any changed, storing what it read.
func rereadAccounts(ctx context.Context, reread accountReader, m string, posted, held map[string]int64) (changed bool, err error) {
	for _, a := range assetScales {
		fp, okP := posted[a.code]
		fh, okH := held[a.code]
		if !okP && !okH {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		p, h, err := reread(rctx, m, a.code)
		cancel()
		if err != nil {
			return true, fmt.Errorf("%s: %w", accountName(m, a.code), err)
		}
		if (okP && p != fp) || (okH && h != fh) {
			changed = true
		}
		posted[a.code], held[a.code] = p, h
	}
	return changed, nil
}

// journalPass is what one listing of a member's journal found: its
// findings, its entries' keys and (shard, seq) pairs, and its postings and
// holds summed by asset in minor units.
type journalPass struct {
	f               findings
	keys            map[string]bool
	seqs            map[[2]uint64]string
	posted, held    map[string]int64
	total, expiries int
	overdue         int // holds past their expiry (and the slack) when listed
}

// listJournal lists member m's journal and checks its entries against the
// history (byKey) and against the keys and sequences of the members
// listed before (seenKey, seenSeq; read only).
func listJournal(ctx context.Context, cl journalLister, m string, byKey map[string]write, seenKey map[string]bool, seenSeq map[[2]uint64]string) *journalPass {
	p := &journalPass{keys: map[string]bool{}, seqs: map[[2]uint64]string{}, posted: map[string]int64{}, held: map[string]int64{}}
	// settledBy names the entry that captured, released or expired
	// each hold: a hold ends once, so a second settling entry (an
	// expiry of a captured hold, say) is a finding.
	settledBy := map[string]string{}
	// expiresAt is each hold's expiry (log time, which the nodes stamp from
	// this host's clock), by hold key; listedAt is when the listing began.
	expiresAt := map[string]int64{}
	listedAt := time.Now().UnixMilli()
	settle := func(j client.JournalEntry, key string) {
		if prev, dup := settledBy[j.Op.HoldKey]; dup {
			p.f.addf("%s: hold %s is settled twice in the journal: by %s and %s (seq %d)", m, j.Op.HoldKey, prev, key, j.Seq)
			return
		}
		settledBy[j.Op.HoldKey] = key
	}
	// add adds delta to sums[asset] in the asset's minor units: one
	// the scale cannot express, or in an asset the workload does not
	// use, is a finding, not a rounding.
	add := func(sums map[string]int64, what string, j client.JournalEntry, asset string, delta decimal.Decimal) {
		scale, known := scaleOf(asset)
		d := minorUnits(delta, scale)
		switch {
		case delta.IsZero():
		case !known:
			p.f.addf("%s: journal has %s (seq %d) %s %s in asset %q", m, j.Op.IdempotencyKey, j.Seq, what, delta, asset)
		case d == badAmount:
			p.f.addf("%s: journal has %s (seq %d) %s %s, not a whole number of minor units at scale %d", m, j.Op.IdempotencyKey, j.Seq, what, delta, scale)
		default:
			sums[asset] += d
		}
	}
	// addHeld adds what entry j holds (+) or lets go (-), in the asset
	// of the account it names.
	addHeld := func(j client.JournalEntry, delta decimal.Decimal) {
		asset := j.Op.Asset
		switch {
		case j.Result.Account != nil:
			asset = j.Result.Account.Asset
		case j.Result.Hold != nil:
			asset = j.Result.Hold.Asset
		}
		add(p.held, "holding", j, asset, delta)
	}
	var before uint64
	for page := 0; page < maxJournalPages; page++ {
		jctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		js, next, err := cl.ListJournal(jctx, Program, m, "", journalPage, before)
		cancel()
		if err != nil {
			p.f.addf("%s: ListJournal: %v", m, err)
			break
		}
		for _, j := range js {
			p.total++
			key := j.Op.IdempotencyKey
			if strings.HasPrefix(key, setupKeyPrefix) {
				continue // the accounts' opening, before the history
			}
			if seenKey[key] || p.keys[key] {
				p.f.addf("%s: key %s is in the journal twice", m, key)
			}
			p.keys[key] = true
			sk := [2]uint64{uint64(j.Result.Shard), j.Seq}
			other, dup := seenSeq[sk]
			if !dup {
				other, dup = p.seqs[sk]
			}
			if dup {
				p.f.addf("%s: seq %d of shard %d is used by %s and %s", m, j.Seq, j.Result.Shard, other, key)
			}
			p.seqs[sk] = key
			if j.Op.Kind == ledger.OpExpireHold {
				// The ledger's own entry of a hold's expiry (rules
				// version 3): of a hold this member got, once (the
				// key is the hold's), releasing all of it, posting
				// nothing.
				h, ok := byKey[j.Op.HoldKey]
				switch {
				case key != ledger.ExpiryKey(j.Op.HoldKey):
					p.f.addf("%s: expiry entry (seq %d) under key %q for hold %s", m, j.Seq, key, j.Op.HoldKey)
				case !ok || h.Input.Kind != KindHold || h.Input.Member != m:
					p.f.addf("%s: journal has the expiry (seq %d) of hold %s, which no client of this member opened", m, j.Seq, j.Op.HoldKey)
				case h.Output.Status == NotApplied || (h.Output.Status == Known && h.Output.Code != ledger.CodeOK):
					p.f.addf("%s: journal has the expiry (seq %d) of hold %s, which the client saw not opened (%s %s)",
						m, j.Seq, j.Op.HoldKey, h.Output.Status, h.Output.Code)
				case h.Output.Status == Known && j.Seq <= h.Output.Seq:
					p.f.addf("%s: hold %s (seq %d) expires at seq %d, before it was opened", m, j.Op.HoldKey, h.Output.Seq, j.Seq)
				case !j.Result.Released.Equal(j.Op.Amount) || !sameMinor(j.Op.Amount, h.Input.Amount, h.Input.Asset):
					p.f.addf("%s: expiry (seq %d) of hold %s releases %s of %s, the hold was %d minor units",
						m, j.Seq, j.Op.HoldKey, j.Result.Released, j.Op.Amount, h.Input.Amount)
				}
				settle(j, key)
				addHeld(j, j.Result.Released.Neg())
				p.expiries++
				continue
			}
			e, ok := byKey[key]
			switch {
			case !ok:
				p.f.addf("%s: journal has %s (seq %d) that no client sent", m, key, j.Seq)
			case e.Output.Status != Known || e.Output.Code != ledger.CodeOK:
				p.f.addf("%s: journal has %s (seq %d) but the client's outcome is %s %s", m, key, j.Seq, e.Output.Status, e.Output.Code)
			case e.Output.Seq != j.Seq:
				p.f.addf("%s: journal has %s at seq %d, client saw seq %d", m, key, j.Seq, e.Output.Seq)
			}
			// Each posting in minor units of its account's asset: one the
			// scale cannot express is a finding, not a rounding. A
			// capture names no asset (its hold does); its result names
			// the account it posted to.
			var delta decimal.Decimal
			asset := j.Op.Asset
			switch j.Op.Kind {
			case ledger.OpCredit:
				delta = j.Op.Amount
			case ledger.OpDebit:
				delta = j.Op.Amount.Neg()
			case ledger.OpCaptureHold:
				delta = j.Result.Captured.Neg()
				asset = ""
				if j.Result.Account != nil {
					asset = j.Result.Account.Asset
				}
			}
			switch j.Op.Kind {
			case ledger.OpHold:
				addHeld(j, j.Op.Amount)
				switch {
				case j.Result.Hold != nil && j.Result.Hold.ExpiresAtMs != 0:
					expiresAt[key] = j.Result.Hold.ExpiresAtMs
				case j.Result.TimeMs != 0:
					expiresAt[key] = j.Result.TimeMs + j.Op.HoldTTL.Milliseconds()
				}
			case ledger.OpCaptureHold:
				settle(j, key)
				addHeld(j, j.Result.Captured.Add(j.Result.Released).Neg())
			case ledger.OpReleaseHold:
				settle(j, key)
				addHeld(j, j.Result.Released.Neg())
			}
			add(p.posted, "posting", j, asset, delta)
		}
		if next == 0 {
			break
		}
		before = next
		if page == maxJournalPages-1 {
			p.f.addf("%s: journal longer than %d pages; the rest was not checked", m, maxJournalPages)
		}
	}
	// A hold long past its expiry must have ended: the leader ticks for
	// expired holds every 250 ms, and the listing comes after the heal and
	// the final reads, which needed a leader of every shard. Without this,
	// an expiry that never fires passed: a read has no lower bound on what
	// has expired (found by review).
	for _, k := range slices.Sorted(maps.Keys(expiresAt)) {
		if expiresAt[k] >= listedAt-expiredHoldSlackMs {
			continue
		}
		p.overdue++
		if _, done := settledBy[k]; !done {
			p.f.addf("%s: hold %s expired at %d, %d ms before its journal was listed, and the journal has it still open",
				m, k, expiresAt[k], listedAt-expiresAt[k])
		}
	}
	return p
}

// expiredHoldSlackMs is how long past its expiry a hold may stay open in
// the journal listed after the run: ticks come every 250 ms while a shard
// has a leader; 10 s also covers an election just before the listing.
const expiredHoldSlackMs = 10_000

// sameEffect reports whether two outputs of one op describe the same
// account after it and the same amounts moved.
func sameEffect(a, b Output) bool {
	return a.HasAccount == b.HasAccount && a.Asset == b.Asset && a.Posted == b.Posted && a.Held == b.Held &&
		a.State == b.State && a.Captured == b.Captured && a.Released == b.Released
}

func describeEffect(o Output) string {
	if !o.HasAccount {
		return fmt.Sprintf("no account, captured %d released %d", o.Captured, o.Released)
	}
	return fmt.Sprintf("%s posted %d held %d %s, captured %d released %d", o.Asset, o.Posted, o.Held, o.State, o.Captured, o.Released)
}

// write is one key's op and the outcome the client has for it.
type write struct {
	Input  Input
	Output Output
}

// writesByKey maps every key of every write of entries to its op and
// outcome; the ops of a linked request get their own results when they are
// known, else the request's status and code.
func writesByKey(entries []Entry) map[string]write {
	byKey := map[string]write{}
	for _, e := range entries {
		switch e.Input.Kind {
		case KindRead:
		case KindLinked:
			for j, in := range e.Input.Ops {
				out := Output{Status: e.Output.Status, Code: e.Output.Code}
				if e.Output.Status == Known && j < len(e.Output.Ops) {
					out = e.Output.Ops[j]
				}
				byKey[in.Key] = write{in, out}
			}
		default:
			byKey[e.Input.Key] = write{e.Input, e.Output}
		}
	}
	return byKey
}

// AccountResult is the linearizability verdict of one member's accounts.
type AccountResult struct {
	Member string                `json:"member"`
	Ops    int                   `json:"ops"`
	Result porcupine.CheckResult `json:"result"`
	// Visualization is the HTML file written for an Illegal history.
	Visualization string `json:"visualization,omitempty"`
}

// checkLinearizable checks each member's history with porcupine, giving
// each at most timeout. Illegal histories get an HTML visualization under
// dir, annotated with the fault timeline.
//
// It stops when ctx ends: porcupine takes no context, so each call's
// timeout is also cut to the time left before ctx's deadline, and ctx is
// checked between members (a cancellation without a deadline is noticed
// after the member in progress, at most timeout late). Members not
// checked by then fail the check, with their count and ctx's error: a run
// whose checks cannot finish must fail by itself, not run on into the test
// binary's -timeout, and an unchecked member is not proven linearizable.
func checkLinearizable(ctx context.Context, entries []Entry, members []string, timeout time.Duration, dir string,
	timeline []TimelineEvent) (CheckResult, []AccountResult) {
	model := Model()
	byMember := map[string][]Entry{}
	for _, e := range entries {
		byMember[e.Input.Member] = append(byMember[e.Input.Member], e)
	}
	var f findings
	var unknown []string
	var results []AccountResult
	unchecked := 0
	var stopped error // why the accounts from the unchecked one on were not checked
	sort.Strings(members)
	for i, m := range members {
		limit, cut, err := timeLeft(ctx, timeout)
		if err != nil {
			unchecked, stopped = len(members)-i, err
			break
		}
		ops := Operations(byMember[m])
		res := porcupine.CheckOperationsTimeout(model, ops, limit)
		ar := AccountResult{Member: m, Ops: len(ops), Result: res}
		switch res {
		case porcupine.Illegal:
			// Again, verbosely: the partial linearizations for the picture.
			// Within what is left of ctx too; a violation is reported
			// whether or not the picture could be drawn.
			vlimit, _, err := timeLeft(ctx, timeout)
			if err != nil {
				f.addf("%s: not linearizable (%d ops); no visualization: %v", m, len(ops), err)
				break
			}
			_, info := porcupine.CheckOperationsVerbose(model, ops, vlimit)
			path := fmt.Sprintf("%s/linearizability-%s.html", dir, m)
			info.AddAnnotations(annotations(timeline))
			if err := porcupine.VisualizePath(model, info, path); err != nil {
				f.addf("%s: not linearizable (%d ops); writing the visualization failed: %v", m, len(ops), err)
			} else {
				ar.Visualization = path
				f.addf("%s: not linearizable (%d ops): see %s", m, len(ops), path)
			}
		case porcupine.Unknown:
			// Not a violation found, but not a history proven linearizable
			// either: the check fails (shorten the member histories with
			// EpochLength, or raise CheckTimeout).
			why := ""
			if cut {
				why = " (cut short by the context's deadline)"
			}
			unknown = append(unknown, fmt.Sprintf("%s: undecided after %s%s (%d ops)", m, limit, why, len(ops)))
			f.addf("%s: undecided within %s%s (%d ops): not proven linearizable", m, limit, why, len(ops))
		}
		results = append(results, ar)
	}
	r := f.result("linearizable", fmt.Sprintf("%d members, each history linearizable", len(members)))
	r.Unknown = unknown
	if unchecked > 0 {
		// In Detail and Unknown rather than a finding: the findings list is
		// capped, and this must show however many members failed before.
		note := fmt.Sprintf("%d of %d members not checked: %v", unchecked, len(members), stopped)
		if r.OK {
			r.OK, r.Detail = false, note
		} else {
			r.Detail += "; " + note
		}
		r.Unknown = append(r.Unknown, note)
	}
	return r, results
}

// timeLeft is the time limit for one porcupine call: timeout (0: none, as
// for porcupine), cut to what is left before ctx's deadline; cut says it
// was. The error is set when ctx has ended or its deadline has passed; the
// caller must not call porcupine then, as a limit of 0 would be none.
func timeLeft(ctx context.Context, timeout time.Duration) (limit time.Duration, cut bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		return max(timeout, 0), false, nil
	}
	left := time.Until(deadline)
	if left <= 0 {
		// Passed, though ctx's timer may not have fired yet.
		return 0, false, context.DeadlineExceeded
	}
	if timeout <= 0 || left < timeout {
		return left, true, nil
	}
	return timeout, false, nil
}

func annotations(timeline []TimelineEvent) []porcupine.Annotation {
	var out []porcupine.Annotation
	for _, ev := range timeline {
		out = append(out, porcupine.Annotation{Tag: "faults", Start: ev.AtNs, End: ev.EndNs,
			Description: string(ev.Kind), Details: ev.What, BackgroundColor: "#fde2e2"})
	}
	return out
}
