package linearizability

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/tally-ledger/tally/ledger"
)

// ledgerOp is the ledger op the edge makes of the op the workload sends.
func ledgerOp(in Input) ledger.Op {
	c := toClientOp(in)
	scale, _ := scaleOf(in.Asset)
	op := ledger.Op{Kind: c.Kind, Program: c.Program, Member: c.Member, Asset: c.Asset, IdempotencyKey: c.IdempotencyKey,
		HoldKey: c.HoldKey, AmountMinor: minorUnits(c.Amount, scale), HoldTTLMs: c.HoldTTL.Milliseconds()}
	if op.AmountMinor != 0 {
		op.Scale = uint8(scale) // as the edge sets it: with the amount it converted
	}
	return op
}

func outOf(r ledger.Result) Output {
	o := Output{Status: Known, Code: r.Code, Seq: r.Seq, TimeMs: r.TimeMs, Replayed: r.Replayed,
		Captured: r.CapturedMinor, Released: r.ReleasedMinor}
	if r.Account.Key.Program != "" {
		o.HasAccount, o.Asset = true, r.Account.Key.Asset
		o.Posted, o.Held = r.Account.PostedMinor, r.Account.HeldMinor
		o.State = r.Account.State
	}
	return o
}

// TestModelAgainstLedger feeds random single and linked requests on a
// member's two accounts through the real ledger and checks that the model
// accepts every result, in order, and every read of either account.
func TestModelAgainstLedger(t *testing.T) {
	codes := map[ledger.Code]int{} // of every op, to show what the seeds reach
	for seed := uint64(0); seed < 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		s := ledger.NewMemStore()
		// The rules the cluster runs: it raises every shard to the newest.
		p := ledger.Progress{Version: ledger.MaxVersion}
		now := int64(1000)
		cmd := func(reqs ...ledger.Request) [][]ledger.Result {
			var res [][]ledger.Result
			var err error
			p, res, err = ledger.ApplyCommand(s, p, ledger.Command{TimeMs: now, Requests: reqs})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		for _, a := range assetScales {
			cmd(ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpDefineAsset, Program: Program, Asset: a.code, Scale: uint8(a.scale), IdempotencyKey: "d" + a.code}}})
			cmd(ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpOpenAccount, Program: Program, Member: "a", Asset: a.code,
				MaxBalanceMinor: a.maxBalance, IdempotencyKey: "o" + a.code}}})
		}
		st := initialState()
		var holds []heldHold
		n := 0
		gen := func() Input {
			n++
			in := Input{Member: "a", Asset: assetScales[rng.IntN(len(assetScales))].code, Key: fmt.Sprintf("k%d", n)}
			switch rng.IntN(8) {
			case 0, 1:
				in.Kind, in.Amount = KindCredit, 1+rng.Int64N(300) // large enough to reach the limit of stored value
			case 2:
				in.Kind, in.Amount = KindDebit, 1+rng.Int64N(150)
			case 3, 4:
				in.Kind, in.Amount, in.TTLMs = KindHold, 1+rng.Int64N(60), 1+rng.Int64N(300)
				holds = append(holds, heldHold{member: "a", asset: in.Asset, key: in.Key})
			case 5:
				if len(holds) == 0 {
					in.Kind = KindUnfreeze
					break
				}
				h := holds[rng.IntN(len(holds))]
				in.Kind, in.Asset, in.HoldKey = KindCapture, h.asset, h.key
				if rng.IntN(3) == 0 {
					in.Amount = 1 + rng.Int64N(30)
				}
			case 6:
				if len(holds) == 0 {
					in.Kind = KindUnfreeze
					break
				}
				h := holds[rng.IntN(len(holds))]
				in.Kind, in.Asset, in.HoldKey = KindRelease, h.asset, h.key
			default:
				in.Kind = []Kind{KindFreeze, KindUnfreeze, KindReportLost, KindReportFound}[rng.IntN(4)]
				if rng.IntN(10) == 0 {
					in.Kind = KindClose // rare: a closed account refuses everything after
				}
			}
			return in
		}
		for i := 0; i < 200; i++ {
			now += rng.Int64N(120)
			var ins []Input
			var reqs []ledger.Request
			for range 1 + rng.IntN(3) { // several requests in one entry, as the proposer batches them
				var in Input
				r := ledger.Request{}
				if rng.IntN(3) == 0 {
					in = Input{Kind: KindLinked, Member: "a"}
					r.Linked = true
					for j := 0; j < 2+rng.IntN(3); j++ {
						in.Ops = append(in.Ops, gen())
						r.Ops = append(r.Ops, ledgerOp(in.Ops[j]))
					}
				} else {
					in = gen()
					r.Ops = []ledger.Op{ledgerOp(in)}
				}
				ins, reqs = append(ins, in), append(reqs, r)
			}
			res := cmd(reqs...)
			for _, rs := range res {
				for _, r := range rs {
					codes[r.Code]++
				}
			}
			for k, in := range ins {
				var out Output
				if in.Kind == KindLinked {
					out = Output{Status: Known, Code: ledger.CodeOK}
					for _, x := range res[k] {
						out.Ops = append(out.Ops, outOf(x))
					}
				} else {
					out = outOf(res[k][0])
				}
				next := step(st, in, out)
				if len(next) != 1 {
					t.Fatalf("seed %d op %d: model refuses %s from %s", seed, i, DescribeOperation(in, out), DescribeState(st))
				}
				st = next[0]
			}
			for _, as := range assetScales {
				a, _, _ := s.Account(ledger.AccountKey{Program: Program, Member: "a", Asset: as.code})
				got := step(st, Input{Kind: KindRead, Member: "a", Asset: as.code}, Output{Status: Known, Code: ledger.CodeOK,
					HasAccount: true, Asset: as.code, Posted: a.PostedMinor, Held: a.HeldMinor,
					State: a.State})
				if len(got) == 0 {
					t.Fatalf("seed %d op %d: read of %+v refused from %s", seed, i, a, DescribeState(st))
				}
			}
		}
	}
	// The rules the model must agree with are all reached.
	for _, c := range []ledger.Code{ledger.CodeOK, ledger.CodeInsufficientFunds, ledger.CodeAccountFrozen, ledger.CodeAccountLost,
		ledger.CodeInvalidState, ledger.CodeLimitExceeded, ledger.CodeHoldExpired, ledger.CodeHoldClosed, ledger.CodeInvalidAmount,
		ledger.CodeLinkedFailed, ledger.CodeHoldNotFound, ledger.CodeBalanceNotZero, ledger.CodeAccountClosed} {
		if codes[c] == 0 {
			t.Errorf("no op got %s: %v", c, codes)
		}
	}
	t.Logf("codes: %v", codes)
}
