package fsm

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// determinismLogs is randomLogs made harder: a raise to the newest rules
// version (journaled expiries, unrecorded backlog refusals) part way, linked requests, a burst of 2,500 holds
// expiring at once (more than one entry's expiry sweep takes), config
// entries between commands, and leader clocks that go backwards.
func determinismLogs(seed int64) []*raft.Log {
	rng := rand.New(rand.NewSource(seed))
	base := randomLogs(seed, 200)
	var out []*raft.Log
	idx := uint64(0)
	add := func(data []byte, typ raft.LogType) {
		idx++
		out = append(out, &raft.Log{Index: idx, Term: 1, Type: typ, Data: data})
	}
	for i, l := range base {
		c, err := ledger.DecodeCommand(l.Data)
		if err != nil {
			panic(err)
		}
		if i == 20 {
			c.SetVersion = ledger.MaxVersion
		}
		if rng.Intn(5) == 0 && (i < 60 || i > 72) {
			c.TimeMs -= int64(rng.Intn(100)) // skewed leader clock (not while m9's debits run, below)
		}
		if i > 3 && rng.Intn(4) == 0 {
			m := fmt.Sprintf("m%d", 1+rng.Intn(4))
			c.Requests = append(c.Requests, ledger.Request{Linked: true, Ops: []ledger.Op{
				move(ledger.OpDebit, fmt.Sprintf("L%d-a", i), m, "PTS", 1+rng.Int63n(500), 0),
				move(ledger.OpCredit, fmt.Sprintf("L%d-b", i), m, "CNY", 1+rng.Int63n(500), 2),
			}})
		}
		if i == 60 {
			// burst of holds with one expiry time
			for j := 0; j < 2500; j++ {
				op := move(ledger.OpHold, fmt.Sprintf("burst-%d", j), "m1", "PTS", 1, 0)
				op.HoldTTLMs = 5
				c.Requests = append(c.Requests, ledger.Request{Ops: []ledger.Op{op}})
			}
			credit := move(ledger.OpCredit, "burst-credit", "m1", "PTS", 100000, 0)
			// m9's hold of its whole balance expires with the burst and,
			// after it in the sweep's order, waits for the third sweep.
			m9 := []ledger.Op{open("o-m9", "m9", "PTS"), move(ledger.OpCredit, "m9-credit", "m9", "PTS", 3000, 0),
				move(ledger.OpHold, "m9-hold", "m9", "PTS", 3000, 0)}
			m9[2].HoldTTLMs = 5
			c.Requests = append([]ledger.Request{{Ops: []ledger.Op{credit}}, {Ops: m9}}, c.Requests...)
		}
		if i > 60 && i <= 72 {
			// Refused (recorded) before the expiry, UNAVAILABLE (not
			// recorded) while the sweeps catch up, applied after.
			c.Requests = append(c.Requests, ledger.Request{Ops: []ledger.Op{
				move(ledger.OpDebit, fmt.Sprintf("m9-debit-%d", i), "m9", "PTS", 1000, 0),
				move(ledger.OpDebit, "m9-retry", "m9", "PTS", 1000, 0)}})
		}
		add(ledger.AppendCommand(nil, c), raft.LogCommand)
		if rng.Intn(15) == 0 {
			add(nil, raft.LogConfiguration)
		}
	}
	return out
}

// applyGrouped applies logs in ApplyBatch calls of 1 to maxPer entries,
// and returns every command entry's results by index.
func applyGrouped(t *testing.T, f *FSM, logs []*raft.Log, rng *rand.Rand, maxPer int) map[uint64][][]ledger.Result {
	res := map[uint64][][]ledger.Result{}
	for i := 0; i < len(logs); {
		n := min(1+rng.Intn(maxPer), len(logs)-i)
		got := f.ApplyBatch(logs[i : i+n])
		for j, l := range logs[i : i+n] {
			if got[j] != nil {
				res[l.Index] = results(t, got[j])
			}
		}
		i += n
	}
	return res
}

// TestDeterminismAcrossGroupingsAndRestore: replicas hand the FSM the same
// log in different ApplyBatch groupings (and parts, maxApplyOps), and some
// restore a snapshot half way instead of replaying: every way must end in
// the same state hash and give every entry the same results (written for a
// determinism review, which found the existing tests left out version 3,
// linked requests, expiry bursts, config entries and a restore mid-log).
func TestDeterminismAcrossGroupingsAndRestore(t *testing.T) {
	for s := int64(1); s <= 3; s++ {
		logs := determinismLogs(s)
		mid := len(logs) / 2
		_, a := openFSM(t, t.TempDir(), 0)
		ra := applyGrouped(t, a, logs, rand.New(rand.NewSource(1)), 1)

		_, b := openFSM(t, t.TempDir(), 0)
		b.maxApplyOps = 5
		rb := applyGrouped(t, b, logs, rand.New(rand.NewSource(s)), 17)

		_, c0 := openFSM(t, t.TempDir(), 0)
		rc := applyGrouped(t, c0, logs[:mid], rand.New(rand.NewSource(s+9)), 9)
		data := snapshotBytes(t, c0)
		_, c := openFSM(t, t.TempDir(), 0)
		require.NoError(t, c.Restore(io.NopCloser(bytes.NewReader(data))))
		for k, v := range applyGrouped(t, c, logs[mid:], rand.New(rand.NewSource(s+5)), 4) {
			rc[k] = v
		}
		sa, _ := a.State()
		sb, _ := b.State()
		sc, _ := c.State()
		require.NoError(t, sa.Conservation)
		require.Equal(t, sa.Hash, sb.Hash, "seed %d: another grouping", s)
		require.Equal(t, sa.Hash, sc.Hash, "seed %d: restored half way", s)
		require.Equal(t, ra, rb, "seed %d: results of another grouping", s)
		require.Equal(t, ra, rc, "seed %d: results after the restore", s)
		require.Equal(t, ledger.MaxVersion, a.Version())
		// The burst really expired, over several entries' sweeps, each
		// journaled.
		for j := 0; j < 2500; j++ {
			h, found, err := a.Hold(prog, "m1", fmt.Sprintf("burst-%d", j))
			require.NoError(t, err)
			require.True(t, found)
			require.Equal(t, ledger.HoldExpired, h.State, "burst-%d", j)
		}
		// While the burst waited, some of m1's debits were answered
		// UNAVAILABLE, unrecorded, rather than refused for good.
		unavailable := 0
		for _, entry := range ra {
			for _, req := range entry {
				for _, r := range req {
					if r.Code == ledger.CodeUnavailable {
						unavailable++
					}
				}
			}
		}
		require.NotZero(t, unavailable, "seed %d", s)
		rec, found, err := a.Record(prog, "m9-retry")
		require.NoError(t, err)
		require.True(t, found)
		require.Equal(t, ledger.CodeOK, rec.Result.Code)
		_, found, err = a.Record(prog, ledger.ExpiryKey("burst-2499"))
		require.NoError(t, err)
		require.True(t, found, "the last burst hold's expiry is journaled")
	}
}
