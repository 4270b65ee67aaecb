package ledger

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	propSeed     = flag.Uint64("ledger.seed", 0, "seed of TestPropertyRandomCommands (0: from the clock)")
	propCommands = flag.Int("ledger.commands", 1500, "commands TestPropertyRandomCommands applies")
)

// opGen generates random, mostly valid ops over a small universe, so that
// ops collide on accounts and holds and reach every rule.
type opGen struct {
	rng    *rand.Rand
	nextID int
	holds  []Op // Hold ops that succeeded, for captures and releases
}

var (
	genPrograms = []string{"p1", "p2"}
	genMembers  = []string{"m0", "m1", "m2", "m3", "m4"}
	genAssets   = []string{"PTS", "CNY", "PTS", "CNY", "PTS", "CNY", "PTS", "CNY", "GOLD"} // GOLD is never defined
)

func genScale(asset string) uint8 {
	if asset == "CNY" {
		return 2
	}
	return 0
}

func (g *opGen) key() string {
	g.nextID++
	return fmt.Sprintf("k%d", g.nextID)
}

func (g *opGen) pick(xs []string) string { return xs[g.rng.IntN(len(xs))] }

func (g *opGen) amount() int64 {
	switch r := g.rng.IntN(100); {
	case r < 2:
		return math.MaxInt64 - g.rng.Int64N(10) // overflow paths
	case r < 10:
		return 1 + g.rng.Int64N(5000)
	default:
		return 1 + g.rng.Int64N(300)
	}
}

func (g *opGen) op(program, member string) Op {
	asset := g.pick(genAssets)
	op := Op{Program: program, Member: member, Asset: asset, IdempotencyKey: g.key()}
	withAmount := func(k OpKind) {
		op.Kind, op.AmountMinor, op.Scale = k, g.amount(), genScale(asset)
		if g.rng.IntN(100) == 0 {
			op.Scale = 1 // mismatch
		}
		if g.rng.IntN(3) == 0 {
			op.Memo = "memo"
		}
	}
	switch r := g.rng.IntN(100); {
	case r < 4:
		op = Op{Kind: OpDefineAsset, Program: program, Asset: asset, Scale: genScale(asset), IdempotencyKey: op.IdempotencyKey}
		if asset == "GOLD" {
			op.Asset = "PTS"
			op.Scale = 3 // ASSET_EXISTS once PTS is defined
		}
	case r < 12:
		op.Kind = OpOpenAccount
		if g.rng.IntN(3) == 0 {
			op.MaxBalanceMinor = 1 + g.rng.Int64N(2000)
		}
	case r < 38:
		withAmount(OpCredit)
	case r < 52:
		withAmount(OpDebit)
	case r < 67:
		withAmount(OpHold)
		op.HoldTTLMs = 1 + g.rng.Int64N(8000)
	case r < 82:
		op.Kind, op.Asset = OpCaptureHold, ""
		if len(g.holds) > 0 && g.rng.IntN(10) > 0 {
			h := g.holds[g.rng.IntN(len(g.holds))]
			op.Program, op.Member, op.HoldKey = h.Program, h.Member, h.IdempotencyKey
			if g.rng.IntN(2) == 0 {
				op.AmountMinor, op.Scale = 1+g.rng.Int64N(h.AmountMinor+5), h.Scale
			} else if g.rng.IntN(2) == 0 {
				op.Scale = h.Scale
			}
		} else {
			op.HoldKey = "nope"
		}
	case r < 88:
		op.Kind, op.Asset = OpReleaseHold, ""
		op.HoldKey = "nope"
		if len(g.holds) > 0 && g.rng.IntN(10) > 0 {
			h := g.holds[g.rng.IntN(len(g.holds))]
			op.Program, op.Member, op.HoldKey = h.Program, h.Member, h.IdempotencyKey
		}
	default:
		op.Kind = []OpKind{OpFreeze, OpUnfreeze, OpReportLost, OpReportFound, OpClose}[g.rng.IntN(5)]
	}
	return op
}

func (g *opGen) request() Request {
	program, member := g.pick(genPrograms), g.pick(genMembers)
	n := 1 + g.rng.IntN(4)
	r := Request{Linked: g.rng.IntN(5) == 0}
	for range n {
		if !r.Linked {
			program, member = g.pick(genPrograms), g.pick(genMembers)
		}
		op := g.op(program, member)
		if r.Linked && op.Kind == OpDefineAsset {
			op = Op{Kind: OpCredit, Program: program, Member: member, Asset: "PTS", AmountMinor: 1, IdempotencyKey: op.IdempotencyKey}
		}
		// Capture and release name their member through the hold; a linked
		// request must stay on one member.
		if r.Linked && (op.Program != program || op.Member != member) {
			op.Program, op.Member = program, member
		}
		r.Ops = append(r.Ops, op)
	}
	return r
}

type applied struct {
	op  Op
	res Result
	req Request // the request it came in (from Version2 a replay needs the same linkage)
	idx int     // its index there
}

// expiredHolds returns the expired holds of s by (program, member, key).
func expiredHolds(s *MemStore) map[[3]string]Hold {
	out := map[[3]string]Hold{}
	for _, h := range s.Holds() {
		if h.State == HoldExpired {
			out[[3]string{h.Program, h.Member, h.Key}] = h
		}
	}
	return out
}

// TestPropertyRandomCommands applies random commands to a MemStore and, after
// each, checks conservation per (program, asset), every account invariant,
// held amounts against open holds, and that re-applying an earlier op with
// its key changes nothing. At the end a replica that applies the same
// commands, through the codec, must reach the same state and results.
func TestPropertyRandomCommands(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: go test ./ledger -run TestPropertyRandomCommands -ledger.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x7a11))
	g := &opGen{rng: rng}
	n := *propCommands
	if testing.Short() {
		n /= 5
	}

	s := NewMemStore()
	var (
		log      [][]byte // the commands as the Raft log holds them
		allRes   [][][]Result
		history  []applied // ops recorded with their first outcome
		requests []Request // for retries of whole requests
		lastTime = t0
		version  = Version1 // raised to MaxVersion halfway, through the log
		lastSeq  uint64
		codes    = map[Code]int{}
	)
	for i := range n {
		c := Command{TimeMs: lastTime + rng.Int64N(2500) - 500} // sometimes behind: time must not go back
		for range rng.IntN(4) {
			var r Request
			switch x := rng.IntN(20); {
			case x == 0 && len(requests) > 0:
				r = requests[rng.IntN(len(requests))] // a client retry
			case x == 2 && len(history) > 0:
				// An earlier op resent linked beside a fresh op of its
				// member, sometimes with another amount: a replay (same
				// linkage), a linkage mismatch or a reused key in a
				// linked request, each with the rules of the version.
				h := history[rng.IntN(len(history))]
				op := h.op
				if rng.IntN(2) == 0 {
					op.AmountMinor++
				}
				fresh := g.op(op.Program, op.Member)
				if fresh.Kind == OpDefineAsset || fresh.Kind == OpCaptureHold || fresh.Kind == OpReleaseHold {
					fresh = Op{Kind: OpCredit, Program: op.Program, Member: op.Member, Asset: "PTS", AmountMinor: 1,
						IdempotencyKey: fresh.IdempotencyKey}
				}
				r = Request{Linked: true, Ops: []Op{fresh, op}}
				if rng.IntN(2) == 0 {
					r.Ops[0], r.Ops[1] = op, fresh
				}
				if op.Kind == OpDefineAsset || op.Member == "" {
					r = g.request()
				}
			case x == 1 && len(history) > 0:
				op := history[rng.IntN(len(history))].op // same key, other op
				op.Memo = "different"
				if op.Kind != OpCredit && op.Kind != OpDebit && op.Kind != OpHold {
					op.Memo = ""
					op.AmountMinor++
				}
				r = Request{Ops: []Op{op}}
			default:
				r = g.request()
			}
			c.Requests = append(c.Requests, r)
			requests = append(requests, r)
		}
		if i == n/2 {
			c.SetVersion = MaxVersion
		}
		enc := AppendCommand(nil, c)
		log = append(log, enc)

		expiredBefore := expiredHolds(s)
		seqBefore := s.LastSeq()
		p, res, err := ApplyCommand(s, Progress{TimeMs: lastTime, Version: version}, c)
		require.NoError(t, err, "seed %d command %d", seed, i)
		now := p.TimeMs
		fresh := 0
		require.Equal(t, max(lastTime, c.TimeMs), now)
		require.Equal(t, max(version, c.SetVersion), p.Version)
		lastTime, version = now, p.Version
		allRes = append(allRes, res)

		for ri, req := range c.Requests {
			require.Len(t, res[ri], len(req.Ops))
			for oi, r := range res[ri] {
				codes[r.Code]++
				if op := req.Ops[oi]; op.Kind == OpHold && r.OK() && !r.Replayed {
					g.holds = append(g.holds, op)
				}
				if r.Replayed || r.Seq == 0 {
					continue
				}
				// Fresh records take increasing numbers in op order
				// (from Version3 expiry records take some in between).
				require.Greater(t, r.Seq, lastSeq, "seed %d command %d", seed, i)
				lastSeq = r.Seq
				fresh++
				require.Equal(t, now, r.TimeMs)
				history = append(history, applied{op: req.Ops[oi], res: r, req: req, idx: oi})
			}
		}
		// Every record is an op's or, from Version3, a hold's expiry, and
		// every hold that expired has its EXPIRE_HOLD record.
		expired := expiredHolds(s)
		newExpiries := 0
		for key, h := range expired {
			if _, old := expiredBefore[key]; old {
				continue
			}
			newExpiries++
			rec, found, err := s.Record(h.Program, ExpiryKey(h.Key))
			require.NoError(t, err)
			require.Equal(t, p.Version >= Version3, found, "seed %d command %d: expiry record of hold %s", seed, i, h.Key)
			if found {
				require.Equal(t, OpExpireHold, rec.Op.Kind)
				require.Equal(t, h.AmountMinor, rec.Op.AmountMinor)
				require.Equal(t, h.AmountMinor, rec.Result.ReleasedMinor)
				require.Equal(t, HoldExpired, rec.Result.Hold.State)
			}
		}
		if p.Version < Version3 {
			newExpiries = 0
		}
		require.Equal(t, seqBefore+uint64(fresh+newExpiries), s.LastSeq(), "seed %d command %d", seed, i)
		lastSeq = s.LastSeq()
		checkInvariants(t, s)

		// Re-applying an earlier op with its key is a replay and changes
		// nothing: alone if it came unlinked, else in its request again.
		if len(history) > 0 {
			h := history[rng.IntN(len(history))]
			before := snap(s)
			req, idx := Request{Ops: []Op{h.op}}, 0
			if h.req.Linked && len(h.req.Ops) > 1 {
				req, idx = h.req, h.idx
			}
			again, err := Apply(s, now, version, req)
			require.NoError(t, err)
			want := h.res
			want.Replayed = true
			require.Equal(t, want, again[idx], "seed %d command %d", seed, i)
			require.Equal(t, before, snap(s))
			require.Equal(t, lastSeq, s.LastSeq())
		}
	}

	// The run must have reached the interesting rules, or it proves little.
	if !testing.Short() {
		for _, c := range []Code{CodeOK, CodeInsufficientFunds, CodeAccountNotFound, CodeHoldExpired, CodeHoldClosed,
			CodeLinkedFailed, CodeIdempotencyKeyReused, CodeUnknownAsset, CodeOverflow} {
			require.Positive(t, codes[c], "no %s in %d commands (seed %d): %v", c, n, seed, codes)
		}
	}
	t.Logf("codes: %v", codes)

	// A replica applying the same log reaches the same state and results.
	replica := NewMemStore()
	last, rv := t0, Version1
	for i, enc := range log {
		c, err := DecodeCommand(enc)
		require.NoError(t, err)
		p, res, err := ApplyCommand(replica, Progress{TimeMs: last, Version: rv}, c)
		require.NoError(t, err)
		last, rv = p.TimeMs, p.Version
		require.Equal(t, allRes[i], res, "seed %d command %d", seed, i)
	}
	require.Equal(t, snap(s), snap(replica))
	require.Equal(t, s.LastSeq(), replica.LastSeq())
	for _, p := range genPrograms {
		for _, m := range genMembers {
			require.Equal(t, s.Journal(p, m), replica.Journal(p, m))
		}
	}
}
