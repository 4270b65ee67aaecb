package linearizability

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tally-ledger/tally/api/tallypb"
)

// FaultKind is a kind of fault the nemesis injects.
type FaultKind string

// Fault kinds.
const (
	// FaultKill: kill -9 a node (a shard leader preferred), restart it on
	// the same data directory after a while.
	FaultKill FaultKind = "kill"
	// FaultPause: SIGSTOP a node (a leader preferred), SIGCONT it later.
	FaultPause FaultKind = "pause"
	// FaultPartition: cut a node off from both others (or cut one pair of
	// nodes), by dropping or blackholing their Raft links.
	FaultPartition FaultKind = "partition"
	// FaultDelay: delay every Raft message to and from a node (or on every
	// link).
	FaultDelay FaultKind = "delay"
	// FaultClient: cut (drop), silence (blackhole) or delay the workers'
	// connections to a node (a leader preferred), while the nodes' own
	// links stay whole. Requests the node already took still apply, but
	// their answers are lost or late: the client must report them
	// indeterminate, and its retries under the same keys must replay, not
	// apply again.
	FaultClient FaultKind = "client"
	// FaultClock: kill -9 a node (a leader preferred) and restart it with
	// its wall clock 2 s to 10 min off (tallyd --unsafe-clock-offset, a
	// tally_unsafe build only), then, after the fault, again with the true
	// clock. Its peers' clocks disagree with it, so it must refuse every
	// request and stamp no entry: checkWriteTimes fails a write stamped
	// more than 2 s off, and the fault fails unless the node, at the end,
	// refuses a read for its clock. Opt-in (not in AllFaults: it needs
	// that build).
	FaultClock FaultKind = "clock"
	// FaultWipe: kill -9 a node, delete its whole data directory (an
	// operator replacing its disk) and restart it with the same ID,
	// addresses and flags, --bootstrap included: it starts with no Raft
	// state, so every replica on it starts under its vote guard and
	// catches up from the leaders by log or snapshot. Opt-in (not in
	// AllFaults). Tally's operator rule is obeyed: a node is wiped only
	// while every node runs, unpaused, and answers, and no replica of any
	// shard on any node is vote guarded (wipeBlocked); else the nemesis
	// waits, up to wipeWait, and records a skip (FaultWipeSkipped).
	FaultWipe FaultKind = "wipe"
	// FaultWipeSkipped marks a wipe the operator rule held back for
	// wipeWait, in the timeline. It is no fault and cannot be asked for:
	// checkFaults does not count it as a wipe injected.
	FaultWipeSkipped FaultKind = "wipe-skipped"
)

// AllFaults are the kinds a full run injects (the CI profile wants every
// one of them).
var AllFaults = []FaultKind{FaultKill, FaultPause, FaultPartition, FaultDelay, FaultClient}

// KnownFaults are every kind a run can be asked to inject: AllFaults and
// the opt-in FaultWipe.
var KnownFaults = []FaultKind{FaultKill, FaultPause, FaultPartition, FaultDelay, FaultClient, FaultWipe, FaultClock}

// Bounds of the wipe fault.
const (
	// wipeWait bounds waiting for the operator rule to allow a wipe
	// (wipeBlocked); past it the wipe is skipped.
	wipeWait = 15 * time.Second
	// wipeRejoin bounds waiting, after the restart, for every replica of
	// the wiped node to leave its vote guard (caught up with a leader).
	// No other fault is injected meanwhile, so the cluster is healthy but
	// for the catch-up; a node still guarded after it is an error of the
	// fault, which checkFaults reports.
	wipeRejoin = 60 * time.Second
	// wipePoll is how often the rule and the rejoin are polled.
	wipePoll = 250 * time.Millisecond
)

// Timing of the nemesis: how long a fault lasts and the calm between two.
type Timing struct {
	FaultMin, FaultMax time.Duration
	GapMin, GapMax     time.Duration
}

// DefaultTiming suits a three-node cluster with 500 ms election timeouts:
// faults long enough for elections to happen, gaps long enough for the
// cluster to recover in between, now and then.
var DefaultTiming = Timing{FaultMin: 1500 * time.Millisecond, FaultMax: 4 * time.Second,
	GapMin: 500 * time.Millisecond, GapMax: 2 * time.Second}

// TimelineEvent is one line of the fault timeline.
type TimelineEvent struct {
	AtNs  int64     `json:"at_ns"` // history clock
	EndNs int64     `json:"end_ns"`
	Kind  FaultKind `json:"kind"`
	What  string    `json:"what"`
	Err   string    `json:"err,omitempty"`
	// NoEffect: a partition or delay under which no traffic on its links
	// was cut, held back or delayed (two followers of a third node's
	// shards exchange nothing). It counts as injected; checkFaults wants
	// some of each kind to have had an effect.
	NoEffect bool `json:"no_effect,omitempty"`
}

// Timeline records faults as they are injected.
type Timeline struct {
	mu     sync.Mutex
	events []TimelineEvent
}

func (t *Timeline) add(ev TimelineEvent) {
	t.mu.Lock()
	t.events = append(t.events, ev)
	t.mu.Unlock()
}

// Events returns the recorded faults in order.
func (t *Timeline) Events() []TimelineEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]TimelineEvent(nil), t.events...)
	sort.Slice(out, func(i, j int) bool { return out[i].AtNs < out[j].AtNs })
	return out
}

// Counts returns how many faults of each kind were injected, counting only
// those whose injection (and undoing) raised no error: the floors on
// faults must not count a kill whose restart failed.
func (t *Timeline) Counts() map[FaultKind]int {
	out := map[FaultKind]int{}
	for _, ev := range t.Events() {
		if ev.Err == "" {
			out[ev.Kind]++
		}
	}
	return out
}

// String renders the timeline, one fault per line, times in seconds since
// the history started.
func (t *Timeline) String() string {
	var b strings.Builder
	for _, ev := range t.Events() {
		fmt.Fprintf(&b, "%8.3fs - %8.3fs  %-9s %s", float64(ev.AtNs)/1e9, float64(ev.EndNs)/1e9, ev.Kind, ev.What)
		if ev.Err != "" {
			fmt.Fprintf(&b, "  ERROR: %s", ev.Err)
		}
		if ev.NoEffect {
			b.WriteString("  (no traffic on its links to hinder)")
		}
		if ev.Kind == FaultWipeSkipped {
			b.WriteString("  (not injected)")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// nemesis injects faults on a schedule drawn from its random source.
type nemesis struct {
	c        *Cluster
	rng      *rand.Rand
	hist     *History
	timeline *Timeline
	timing   Timing
	kinds    []FaultKind
	shards   int
	direct   []tallypb.LedgerClient // raw connections to each node
}

// run injects faults, one at a time (never two at once: each inject undoes
// its fault before it returns), in rounds of every kind in a seeded
// order, until at least minRounds rounds are done and minDuration has
// passed, or ctx ends. Client faults, which touch no node, run on their
// own schedule beside the others (a client link cut while a leader is
// killed, paused or cut off), at least minRounds of them, until the
// others are done; alone, they run as the others would. Every fault is
// undone when it returns.
func (n *nemesis) run(ctx context.Context, minRounds int, minDuration time.Duration) {
	others := slices.DeleteFunc(slices.Clone(n.kinds), func(k FaultKind) bool { return k == FaultClient })
	if len(others) == 0 || len(others) == len(n.kinds) {
		n.rounds(ctx, n.kinds, minRounds, minDuration, nil)
		return
	}
	// Its own random source (drawn from the nemesis's, so a seed replays
	// it), as it runs on its own goroutine.
	side := *n
	side.rng = rand.New(rand.NewPCG(n.rng.Uint64(), n.rng.Uint64()))
	// Longer calms than the others': client links cut most of the time
	// left the workload a quarter of its operations (seed 158: 33 client
	// faults in 120 s).
	side.timing.GapMin, side.timing.GapMax = n.timing.FaultMin, 2*n.timing.FaultMax
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { side.rounds(ctx, []FaultKind{FaultClient}, minRounds, 0, done) })
	n.rounds(ctx, others, minRounds, minDuration, nil)
	close(done)
	wg.Wait()
}

// rounds injects kinds, one at a time, in rounds of every kind in a seeded
// order, until at least minRounds rounds are done and minDuration has
// passed (and until, for a non-nil until, it is closed), or ctx ends.
func (n *nemesis) rounds(ctx context.Context, kinds []FaultKind, minRounds int, minDuration time.Duration, until <-chan struct{}) {
	start := time.Now()
	more := func(round int) bool {
		if round < minRounds || time.Since(start) < minDuration {
			return true
		}
		if until == nil {
			return false
		}
		select {
		case <-until:
			return false
		default:
			return true
		}
	}
	for round := 0; ctx.Err() == nil && more(round); round++ {
		order := append([]FaultKind(nil), kinds...)
		n.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, k := range order {
			if ctx.Err() != nil {
				return
			}
			n.sleep(ctx, n.between(n.timing.GapMin, n.timing.GapMax))
			n.inject(ctx, k)
		}
	}
}

func (n *nemesis) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(n.rng.Int64N(int64(hi-lo)))
}

func (n *nemesis) sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// target picks a node: with probability 3/4 the leader of a random shard
// (as the nodes report it), else a random node.
func (n *nemesis) target(ctx context.Context) (int, string) {
	if n.rng.IntN(4) != 0 {
		shard := n.rng.IntN(n.shards)
		if i, ok := n.leaderOf(ctx, shard); ok {
			return i, fmt.Sprintf("%s (leader of shard %d)", n.c.NodeID(i), shard)
		}
	}
	i := n.rng.IntN(ClusterSize)
	return i, n.c.NodeID(i)
}

func (n *nemesis) leaderOf(ctx context.Context, shard int) (int, bool) {
	for i, lc := range n.direct {
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := lc.ShardState(actx, &tallypb.ShardStateRequest{Shard: uint32(shard)})
		cancel()
		if err == nil && st.GetLeader() {
			return i, true
		}
	}
	return 0, false
}

func (n *nemesis) inject(ctx context.Context, kind FaultKind) {
	d := n.between(n.timing.FaultMin, n.timing.FaultMax)
	ev := TimelineEvent{Kind: kind, AtNs: n.hist.Now()}
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	switch kind {
	case FaultKill:
		i, who := n.target(ctx)
		ev.What = fmt.Sprintf("kill -9 %s, restart after %s", who, d.Round(time.Millisecond))
		note(n.c.Kill(i))
		n.sleep(ctx, d)
		note(n.c.Restart(ctx, i))
	case FaultPause:
		i, who := n.target(ctx)
		ev.What = fmt.Sprintf("SIGSTOP %s for %s", who, d.Round(time.Millisecond))
		note(n.c.Pause(i))
		n.sleep(ctx, d)
		note(n.c.Resume(i))
	case FaultPartition:
		i, who := n.target(ctx)
		mode := LinkBlackhole
		if n.rng.IntN(2) == 0 {
			mode = LinkDrop
		}
		others := []int{(i + 1) % ClusterSize, (i + 2) % ClusterSize}
		what := "isolate " + who
		if n.rng.IntN(4) == 0 {
			others = others[:1]
			what = fmt.Sprintf("cut %s <-> %s", who, n.c.NodeID(others[0]))
		}
		ev.What = fmt.Sprintf("%s (%s) for %s", what, mode, d.Round(time.Millisecond))
		before := n.c.hindered()
		for _, o := range others {
			n.c.SetLink(i, o, mode, 0)
			n.c.SetLink(o, i, mode, 0)
		}
		n.sleep(ctx, d)
		ev.NoEffect = n.c.hindered() == before
		for _, o := range others {
			n.c.SetLink(i, o, LinkPass, 0)
			n.c.SetLink(o, i, LinkPass, 0)
		}
	case FaultWipe:
		n.wipe(ctx, d, &ev, note)
	case FaultClock:
		i, who := n.target(ctx)
		off := time.Duration(2000+n.rng.IntN(598_000)) * time.Millisecond
		if n.rng.IntN(2) == 0 {
			off = -off
		}
		ev.What = fmt.Sprintf("kill -9 %s, restart it with its clock %s off for %s, then with the true clock", who, off, d.Round(time.Millisecond))
		if err := n.c.Kill(i); err != nil {
			note(err)
			break
		}
		note(n.c.RestartWith(ctx, i, []string{"--unsafe-clock-offset", off.String()}))
		n.sleep(ctx, d)
		// By now its peers' clocks have been compared with its own
		// (within a second of its start): it must refuse for its clock.
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.direct[i].GetAccount(actx, &tallypb.GetAccountRequest{Program: Program, Member: "clock-probe", Asset: "PTS"})
		cancel()
		if ctx.Err() == nil && (err == nil || !strings.Contains(err.Error(), "clock skewed")) {
			note(fmt.Errorf("%s, its clock %s off, did not refuse a read for it: %v", n.c.NodeID(i), off, err))
		}
		note(n.c.Kill(i))
		note(n.c.Restart(ctx, i))
	case FaultClient:
		i, who := n.target(ctx)
		mode, delay := []LinkMode{LinkPass, LinkDrop, LinkBlackhole}[n.rng.IntN(3)], time.Duration(0)
		switch mode {
		case LinkPass:
			delay = time.Duration(20+n.rng.IntN(280)) * time.Millisecond
			ev.What = fmt.Sprintf("delay the clients' links to %s by %s for %s", who, delay, d.Round(time.Millisecond))
		default:
			ev.What = fmt.Sprintf("cut the clients' links to %s (%s) for %s", who, mode, d.Round(time.Millisecond))
		}
		before := n.c.clientHindered()
		n.c.SetClientLink(i, mode, delay)
		n.sleep(ctx, d)
		ev.NoEffect = n.c.clientHindered() == before
		n.c.SetClientLink(i, LinkPass, 0)
	case FaultDelay:
		delay := time.Duration(20+n.rng.IntN(280)) * time.Millisecond
		var links [][2]int
		if n.rng.IntN(3) == 0 {
			ev.What = fmt.Sprintf("delay every link by %s for %s", delay, d.Round(time.Millisecond))
			for a := 0; a < ClusterSize; a++ {
				for b := 0; b < ClusterSize; b++ {
					if a != b {
						links = append(links, [2]int{a, b})
					}
				}
			}
		} else {
			i, who := n.target(ctx)
			ev.What = fmt.Sprintf("delay links of %s by %s for %s", who, delay, d.Round(time.Millisecond))
			for o := 0; o < ClusterSize; o++ {
				if o != i {
					links = append(links, [2]int{i, o}, [2]int{o, i})
				}
			}
		}
		before := n.c.hindered()
		for _, l := range links {
			n.c.SetLink(l[0], l[1], LinkPass, delay)
		}
		n.sleep(ctx, d)
		ev.NoEffect = n.c.hindered() == before
		for _, l := range links {
			n.c.SetLink(l[0], l[1], LinkPass, 0)
		}
	}
	ev.EndNs = n.hist.Now()
	ev.Err = strings.Join(errs, "; ")
	n.timeline.add(ev)
}

// wipe injects FaultWipe on a node drawn uniformly at random, leader of
// some shards or not: with shards spread over the nodes most nodes lead
// something, and a leader's wipe is the harder case (an election among
// the two others, then the ex-leader's catch-up without a vote). Safety
// does not depend on the choice: the rule that every other node runs and
// no replica is guarded makes the two others a majority holding every
// committed entry, and the wiped node's guard keeps it from voting until
// it holds them again.
func (n *nemesis) wipe(ctx context.Context, d time.Duration, ev *TimelineEvent, note func(error)) {
	i := n.rng.IntN(ClusterSize)
	who := n.c.NodeID(i)
	began := time.Now()
	var leads []int
	for {
		why, l := n.wipeBlocked(ctx, i)
		if why == "" {
			leads = l
			break
		}
		if time.Since(began) >= wipeWait || ctx.Err() != nil {
			ev.Kind = FaultWipeSkipped
			ev.What = fmt.Sprintf("wipe %s skipped after %s: %s", who, time.Since(began).Round(time.Millisecond), why)
			return
		}
		n.sleep(ctx, wipePoll)
	}
	if len(leads) > 0 {
		who = fmt.Sprintf("%s (leader of shards %v)", who, leads)
	}
	ev.AtNs = n.hist.Now() // the wipe starts now, not when the rule was first polled
	ev.What = fmt.Sprintf("kill -9 %s, wipe its data directory, restart after %s", who, d.Round(time.Millisecond))
	if waited := time.Since(began); waited >= wipePoll {
		ev.What += fmt.Sprintf(" (waited %s for the wipe rule)", waited.Round(time.Millisecond))
	}
	if err := n.c.Kill(i); err != nil {
		// Not known dead: its directory must not go.
		note(err)
		note(n.c.Restart(ctx, i))
		return
	}
	note(n.c.Wipe(i))
	n.sleep(ctx, d)
	if err := n.c.Restart(ctx, i); err != nil {
		note(err)
		return
	}
	restarted := time.Now()
	guarded, err := n.rejoin(ctx, i)
	switch {
	case err == nil:
		ev.What += fmt.Sprintf("; every replica out of its vote guard %s after the restart", time.Since(restarted).Round(time.Millisecond))
	case ctx.Err() != nil:
		ev.What += "; the run ended before it left its vote guard"
	default:
		note(fmt.Errorf("%s: %w (shards still vote guarded: %v)", n.c.NodeID(i), err, guarded))
	}
}

// wipeBlocked applies the operator rule to wiping node target: it returns
// why a wipe must wait ("" when it may go ahead), and the shards target
// leads. A node that is down or paused blocks it, as does one that does
// not answer ShardState for every shard (unknown counts as guarded), one
// still confirming its shard count (just started), and any replica, on
// any node, under its vote guard: it may lack entries it acknowledged,
// and with the wiped node it would make two of three replicas that
// cannot vote.
func (n *nemesis) wipeBlocked(ctx context.Context, target int) (string, []int) {
	for j := 0; j < ClusterSize; j++ {
		if !n.c.Running(j) {
			return n.c.NodeID(j) + " is down", nil
		}
		if n.c.Paused(j) {
			return n.c.NodeID(j) + " is paused", nil
		}
	}
	var leads []int
	for j, lc := range n.direct {
		for shard := 0; shard < n.shards; shard++ {
			actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := lc.ShardState(actx, &tallypb.ShardStateRequest{Shard: uint32(shard)})
			cancel()
			switch {
			case err != nil:
				return fmt.Sprintf("%s did not answer for shard %d (unknown counts as guarded): %v", n.c.NodeID(j), shard, err), nil
			case st.GetVoteGuarded():
				return fmt.Sprintf("shard %d on %s is vote guarded", shard, n.c.NodeID(j)), nil
			case st.GetMisconfigured():
				return fmt.Sprintf("%s has not confirmed its shard count yet", n.c.NodeID(j)), nil
			}
			if j == target && st.GetLeader() {
				leads = append(leads, shard)
			}
		}
	}
	return "", leads
}

// rejoin waits, up to wipeRejoin, until no replica on node i is vote
// guarded, and returns the shards still guarded (or unknown) when it gives
// up.
func (n *nemesis) rejoin(ctx context.Context, i int) ([]int, error) {
	deadline := time.Now().Add(wipeRejoin)
	for {
		var guarded []int
		for shard := 0; shard < n.shards; shard++ {
			actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			st, err := n.direct[i].ShardState(actx, &tallypb.ShardStateRequest{Shard: uint32(shard)})
			cancel()
			if err != nil || st.GetVoteGuarded() {
				guarded = append(guarded, shard)
			}
		}
		if len(guarded) == 0 {
			return nil, nil
		}
		if ctx.Err() != nil {
			return guarded, ctx.Err()
		}
		if time.Now().After(deadline) {
			return guarded, fmt.Errorf("still vote guarded %s after the restart", wipeRejoin)
		}
		n.sleep(ctx, wipePoll)
	}
}
