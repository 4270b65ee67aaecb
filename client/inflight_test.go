package client

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// TestKeySentMeanwhileIsIndeterminate: two calls of one Client send one key
// (a webhook delivered twice, a re-send while the first call still waits).
// The second is answered with something that records nothing. It used to be
// reported "not applied" (the record of open keys holds only calls that
// have ended), while the first call applied the op, before that answer or
// after it. It is reported indeterminate; once no call overlaps, such an
// answer is "not applied" again.
func TestKeySentMeanwhileIsIndeterminate(t *testing.T) {
	unrecorded := &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable),
		Message: "expired holds still to release; not applied and not recorded"}}}
	for _, tc := range []struct {
		name     string
		coalesce bool
		// firstDoneBefore: the first call is answered (applied) before the
		// second's answer comes, not after.
		firstDoneBefore bool
		// refused: the second call is refused by the client, not answered.
		refused bool
	}{
		{"answered while the first waits", false, false, false},
		{"answered while the first waits, coalescing", true, false, false},
		{"answered after the first applied", false, true, false},
		{"answered after the first applied, coalescing", true, true, false},
		{"refused by the client while the first waits", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			c := dial(t, fc, Config{Coalesce: tc.coalesce, MaxInflightPerShard: 2})
			releaseFirst, releaseSecond := make(chan struct{}), make(chan struct{})
			arrived := make(chan string, 4)
			var n atomic.Int32
			fc.setHook(func(_ *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				arrived <- req.Ops[0].IdempotencyKey
				release := releaseSecond
				if n.Add(1) == 1 {
					release = releaseFirst
				}
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err(), true
				}
				if release == releaseFirst {
					return nil, nil, false // applied
				}
				return unrecorded, nil, true
			})
			op := credit("alice", "pay-1", "10")
			first := make(chan error, 1)
			go func() {
				_, err := c.Apply(testCtx(t), op)
				first <- err
			}()
			require.Equal(t, "pay-1", <-arrived)

			if tc.refused {
				_, err := c.CaptureHold(testCtx(t), testProgram, "alice", "pay-1", decimal.Zero, "pay-1")
				require.Error(t, err)
				assert.True(t, IsIndeterminate(err), "refused while a call sends the key: %v", err)
				close(releaseFirst)
				require.NoError(t, <-first)
				_, err = c.CaptureHold(testCtx(t), testProgram, "alice", "pay-1", decimal.Zero, "pay-1")
				assert.False(t, IsIndeterminate(err), "refused with no call sending the key: %v", err)
				return
			}

			second := make(chan Result, 1)
			go func() {
				r, _ := c.Apply(testCtx(t), op)
				second <- r
			}()
			require.Equal(t, "pay-1", <-arrived)
			if tc.firstDoneBefore {
				close(releaseFirst)
				require.NoError(t, <-first)
				close(releaseSecond)
			} else {
				close(releaseSecond)
			}
			r := <-second
			assert.Equal(t, ledger.CodeUnavailable, r.Code)
			assert.True(t, r.Indeterminate, "answered unrecorded while another call sent the key: %+v", r)
			require.Error(t, r.Err())
			assert.True(t, IsIndeterminate(r.Err()), "%v", r.Err())
			if !tc.firstDoneBefore {
				close(releaseFirst)
				require.NoError(t, <-first)
			}

			// No call overlaps now, and the first's outcome was recorded:
			// an unrecorded answer says "not applied" again.
			r, _ = c.Apply(testCtx(t), op)
			assert.Equal(t, ledger.CodeUnavailable, r.Code)
			assert.False(t, r.Indeterminate, "no other call sent the key: %+v", r)
			assert.True(t, c.open.empty())
		})
	}
}

// TestFlightSlots: a slot is held from take to end; two keys of one call in
// one slot do not overlap each other; of two calls that overlap, each sees
// it, whichever took the slot first.
func TestFlightSlots(t *testing.T) {
	f := newInflightKeys()
	a := openKey{program: "p", key: "k1", shard: 0}
	other := openKey{program: "p", key: "k1", shard: 1}
	for f.slotOf(other) == f.slotOf(a) { // one seed in flightSlots
		f = newInflightKeys()
	}

	one := f.take(f.add(f.add(f.add(nil, a), a), openKey{program: "p", key: ""}))
	assert.Len(t, one.holds, 1, "one hold per slot; an empty key holds none")
	assert.False(t, one.anyOverlapped())
	assert.True(t, f.held([]openKey{a}))
	assert.False(t, f.held([]openKey{other}))

	two := f.take(f.add(nil, a))
	assert.True(t, two.overlapped(a), "took the slot while another call held it")
	assert.True(t, one.overlapped(a), "another call took the slot meanwhile")
	assert.False(t, one.overlapped(other), "not a key of the call")
	two.end()
	assert.True(t, one.overlapped(a), "an overlap stays seen after the other call ends")
	one.end()
	assert.False(t, f.held([]openKey{a}))

	three := f.take(f.add(nil, a))
	assert.False(t, three.overlapped(a), "no call held the slot since this one took it")
	// A call counted in but not yet past its bump of overlaps (take's
	// window, found by review) is seen by its count.
	f.slots[f.slotOf(a)].calls.Add(1)
	assert.True(t, three.overlapped(a), "another call holds the slot now")
	f.slots[f.slotOf(a)].calls.Add(-1)
	three.end()
}

// BenchmarkFlight is what a one-op call pays to count itself in and out.
func BenchmarkFlight(b *testing.B) {
	f := newInflightKeys()
	k := openKey{program: "shop-1", key: "order-12345678-credit", shard: 3}
	for b.Loop() {
		f.take(f.add(make([]flightHold, 0, 1), k)).end()
	}
}
