package ledger

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExpiryIsJournaled: from Version3 a hold's expiry, swept at an entry's
// log time or found by a capture, is an EXPIRE_HOLD entry of the member's
// journal saying what returned to the account; before, the held balance
// changed with no entry. Version 2 rules are unchanged (replicas on older
// binaries apply the same entries alike).
func TestExpiryIsJournaled(t *testing.T) {
	for _, v := range []uint32{Version2, Version3} {
		t.Run(map[uint32]string{Version2: "v2", Version3: "v3"}[v], func(t *testing.T) {
			f := newFixture(t)
			f.version = v
			f.must(mkHold("h1", "alice", tCNY, 300, 1_000), mkHold("h2", "alice", tCNY, 200, 1_000))
			f.timeMs += 1_000

			// h1 and h2 are swept by an entry's expiry pass (a tick).
			p, _, err := ApplyCommand(f.s, Progress{TimeMs: f.timeMs - 1, Version: v}, Command{TimeMs: f.timeMs})
			require.NoError(t, err)
			require.Equal(t, v, p.Version)
			// h3 is found expired by its capture.
			f.must(mkHold("h3", "alice", tCNY, 50, 1_000))
			f.timeMs += 1_000
			seqBefore := f.s.LastSeq()
			r := f.applyOne(mkCapture("alice", "h3", 0, 0))
			require.Equal(t, CodeHoldExpired, r.Code)

			for _, h := range []string{"h1", "h2", "h3"} {
				require.Equal(t, HoldExpired, f.hold("alice", h).State)
				rec, found, err := f.s.Record(tProg, ExpiryKey(h))
				require.NoError(t, err)
				require.Equal(t, v >= Version3, found, "expiry record of %s", h)
				if !found {
					continue
				}
				hold := f.hold("alice", h)
				require.Equal(t, Op{Kind: OpExpireHold, Program: tProg, Member: "alice", Asset: tCNY, IdempotencyKey: ExpiryKey(h),
					HoldKey: h, AmountMinor: hold.AmountMinor, Scale: 2}, rec.Op)
				require.Equal(t, CodeOK, rec.Result.Code)
				require.Equal(t, hold.AmountMinor, rec.Result.ReleasedMinor)
				require.Equal(t, hold, rec.Result.Hold)
				require.Equal(t, "alice", rec.Result.Account.Key.Member)
			}
			if v < Version3 {
				require.Equal(t, seqBefore+1, r.Seq)
				for _, rec := range f.s.Journal(tProg, "alice") {
					require.NotEqual(t, OpExpireHold, rec.Op.Kind)
				}
				return
			}
			// The capture's own record follows the expiry it caused.
			rec, _, _ := f.s.Record(tProg, ExpiryKey("h3"))
			require.Equal(t, seqBefore+1, rec.Seq)
			require.Equal(t, seqBefore+2, r.Seq)
			require.Equal(t, int64(0), rec.Result.Account.HeldMinor, "the account after the expiry")
			// The journal explains the held balance: the three holds and
			// their three expiries (a failed capture is not journaled).
			var kinds []OpKind
			for _, rec := range f.s.Journal(tProg, "alice") {
				if rec.Op.Asset == tCNY && rec.Op.Kind != OpOpenAccount && rec.Op.Kind != OpCredit {
					kinds = append(kinds, rec.Op.Kind)
				}
			}
			require.ElementsMatch(t, []OpKind{OpHold, OpHold, OpHold, OpExpireHold, OpExpireHold, OpExpireHold}, kinds)
			// The journaled expiry is no key a client can send or reuse.
			require.Error(t, Validate(Op{Kind: OpCredit, Program: tProg, Member: "alice", Asset: tCNY, AmountMinor: 1, Scale: 2,
				IdempotencyKey: ExpiryKey("h1")}))
		})
	}
}

// TestExpireHoldCannotBeSent: EXPIRE_HOLD is the ledger's own entry.
func TestExpireHoldCannotBeSent(t *testing.T) {
	err := Validate(Op{Kind: OpExpireHold, Program: tProg, Member: "alice", Asset: tCNY, IdempotencyKey: "k", HoldKey: "h1",
		AmountMinor: 5, Scale: 2})
	require.Error(t, err)
	require.Equal(t, CodeInvalidArgument, CodeOf(err))
	f := newFixture(t)
	f.must(mkHold("h1", "alice", tCNY, 5, 60_000))
	r := f.applyOne(Op{Kind: OpExpireHold, Program: tProg, Member: "alice", Asset: tCNY, HoldKey: "h1", AmountMinor: 5, Scale: 2})
	require.Equal(t, CodeInvalidArgument, r.Code, "apply refuses it too")
	require.Equal(t, HoldOpen, f.hold("alice", "h1").State)
}

// TestWholeCaptureHasOneFingerprint: a whole-hold capture may carry Scale 0
// (what the API edge sends) or the asset's scale; from Version3 a retry in
// the other form is the same op, not IDEMPOTENCY_KEY_REUSED.
func TestWholeCaptureHasOneFingerprint(t *testing.T) {
	for _, tc := range []struct {
		v    uint32
		want Code
	}{{Version2, CodeIdempotencyKeyReused}, {Version3, CodeOK}} {
		f := newFixture(t)
		f.version = tc.v
		f.must(mkHold("h1", "alice", tCNY, 300, 60_000))
		first := mkCapture("alice", "h1", 0, 0)
		first.IdempotencyKey = "cap"
		r := f.applyOne(first)
		require.Equal(t, CodeOK, r.Code)
		retry := first
		retry.Scale = 2
		again := f.applyOne(retry)
		require.Equal(t, tc.want, again.Code, "version %d", tc.v)
		if tc.want == CodeOK {
			require.True(t, again.Replayed)
			require.Equal(t, r.Seq, again.Seq)
		}
		// A partial capture's amount is at its scale: no other form.
		require.NotEqual(t, fingerprintFor(tc.v, &Op{Kind: OpCaptureHold, AmountMinor: 5, Scale: 2}, false),
			fingerprintFor(tc.v, &Op{Kind: OpCaptureHold, AmountMinor: 5, Scale: 0}, false))
	}
}

// TestVersion2RecordsReplayUnderVersion3: a whole-hold capture recorded
// under version 2 with the asset's Scale (its fingerprint covered Scale)
// still replays when retried after the shard rose to version 3, where the
// op is fingerprinted with Scale 0 (found by review).
func TestVersion2RecordsReplayUnderVersion3(t *testing.T) {
	for _, linked := range []bool{false, true} {
		f := newFixture(t)
		f.version = Version2
		f.must(mkHold("h1", "alice", tCNY, 300, 60_000))
		capture := mkCapture("alice", "h1", 0, 2)
		capture.IdempotencyKey = "cap"
		ops := []Op{capture}
		if linked {
			ops = append(ops, Op{Kind: OpCredit, Program: tProg, Member: "alice", Asset: tCNY, AmountMinor: 1, Scale: 2, IdempotencyKey: "bonus"})
		}
		first := f.applyReq(linked, ops...)
		require.Equal(t, CodeOK, first[0].Code)
		f.version = Version3
		again := f.applyReq(linked, ops...)
		require.True(t, again[0].Replayed, "linked=%v: %s %s", linked, again[0].Code, again[0].Message)
		require.Equal(t, first[0].Seq, again[0].Seq)
	}
}
