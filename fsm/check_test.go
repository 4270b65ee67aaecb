package fsm

import (
	"math/rand"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// TestChecksHashTheStateAtTheirIndex: a replica's consistency check at
// index i hashes the state as of entry i, whatever batches the entries came
// in, so that replicas given other batches by Raft (a leader and a follower
// catching up) report the same hash there.
func TestChecksHashTheStateAtTheirIndex(t *testing.T) {
	const every = 20
	logs := randomLogs(11, 200)
	// A check index that is not a command (a Raft no-op or configuration
	// entry) is checked too.
	logs[39] = &raft.Log{Index: 40, Term: 1, Type: raft.LogNoop}

	// The reference: one entry at a time, no checks, State after each
	// check index.
	_, ref := openFSM(t, t.TempDir(), 0)
	want := map[uint64][]byte{}
	for _, l := range logs {
		ref.ApplyBatch([]*raft.Log{l})
		if l.Index%every == 0 {
			st, err := ref.State()
			require.NoError(t, err)
			require.Equal(t, l.Index, st.AppliedIndex)
			want[l.Index] = st.Hash
		}
	}

	// One batch of every entry: each check must end the Pebble batch at
	// its entry. Later check indexes may come while the first walk runs
	// (and are skipped), but the first always starts.
	_, whole := openFSM(t, t.TempDir(), 0)
	whole.SetCheckEvery(every)
	var hooked []Check
	whole.SetHooks(Hooks{OnCheck: func(c Check) { hooked = append(hooked, c) }})
	whole.ApplyBatch(logs)
	whole.chk.wg.Wait()
	require.NotEmpty(t, hooked)
	require.Equal(t, len(hooked)+int(whole.ChecksSkipped()), len(want))
	require.Equal(t, uint64(every), hooked[0].Index, "the first check did not run")
	for _, c := range hooked {
		require.NoError(t, c.Err, "check at %d", c.Index)
		require.NoError(t, c.Conservation, "check at %d", c.Index)
		require.Equal(t, want[c.Index], c.Hash, "check at %d", c.Index)
	}
	require.Equal(t, uint64(len(logs)), whole.AppliedIndex())

	// Batches of random sizes, each walk awaited: every check index has a
	// result, equal to the reference's.
	_, parts := openFSM(t, t.TempDir(), 0)
	parts.SetCheckEvery(every)
	rng := rand.New(rand.NewSource(3))
	for i := 0; i < len(logs); {
		n := min(1+rng.Intn(17), len(logs)-i)
		parts.ApplyBatch(logs[i : i+n])
		parts.chk.wg.Wait()
		i += n
	}
	require.Zero(t, parts.ChecksSkipped())
	last, ok := parts.LastCheck()
	require.True(t, ok)
	require.Equal(t, uint64(200), last.Index)
	for index, h := range want {
		c, ok := parts.CheckAt(index)
		if index <= 200-keptChecks*every {
			require.False(t, ok, "check at %d kept among the newest %d", index, keptChecks)
			continue
		}
		require.True(t, ok, "no check at %d", index)
		require.NoError(t, c.Err, "check at %d", index)
		require.Equal(t, h, c.Hash, "check at %d", index)
	}

	// After StopChecks no walk starts.
	parts.StopChecks()
	parts.ApplyBatch([]*raft.Log{{Index: 220, Term: 1, Type: raft.LogNoop}})
	_, ok = parts.CheckAt(220)
	require.False(t, ok, "a check started after StopChecks")
}

// TestCheckHashesRecordsThatDoNotDecode: a replica whose account record
// holds bytes no entry wrote still reports a hash (which then differs from
// the other replicas'), not only a failed walk that a leader cannot compare.
func TestCheckHashesRecordsThatDoNotDecode(t *testing.T) {
	logs := randomLogs(5, 17) // indexes 1-19
	logs = append(logs, &raft.Log{Index: 20, Term: 1, Type: raft.LogNoop})
	var checks [2]Check
	for i := range checks {
		_, f := openFSM(t, t.TempDir(), 0)
		f.SetCheckEvery(20)
		f.ApplyBatch(logs[:19])
		if i == 1 {
			lower, upper := shardBounds(0)
			it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
			require.NoError(t, err)
			var account []byte
			for valid := it.First(); valid && account == nil; valid = it.Next() {
				if it.Key()[shardPrefixLen] == tagAccount {
					account = append([]byte(nil), it.Key()...)
				}
			}
			require.NoError(t, it.Close())
			require.NotNil(t, account)
			require.NoError(t, f.db.Set(account, []byte("garbage"), pebble.NoSync))
		}
		f.ApplyBatch(logs[19:])
		f.chk.wg.Wait()
		var ok bool
		checks[i], ok = f.CheckAt(20)
		require.True(t, ok)
		require.NoError(t, checks[i].Err)
		require.NotNil(t, checks[i].Hash)
	}
	require.NoError(t, checks[0].Conservation)
	require.ErrorContains(t, checks[1].Conservation, "does not decode")
	require.NotEqual(t, checks[0].Hash, checks[1].Hash)
}
