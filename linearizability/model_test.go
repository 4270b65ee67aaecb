package linearizability

import (
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/tally-ledger/tally/ledger"
)

// op builds a history entry of member "a".
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	in.Member = "a"
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func ok(seq uint64, t int64, posted, held int64) Output {
	return Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: t, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: posted, Held: held}
}

func fail(code ledger.Code, seq uint64, t int64) Output {
	return Output{Status: Known, Code: code, Seq: seq, TimeMs: t}
}

func read(posted, held int64, frozen bool) Output {
	out := Output{Status: Known, Code: ledger.CodeOK, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: posted, Held: held}
	if frozen {
		out.State = ledger.StateFrozen
	}
	return out
}

var indeterminate = Output{Status: Indeterminate, Code: ledger.CodeUnavailable}

// settled is out with the amounts a capture or release moved.
func settled(out Output, captured, released int64) Output {
	out.Captured, out.Released = captured, released
	return out
}

func credit(key string, amount int64) Input {
	return Input{Kind: KindCredit, Asset: Asset, Key: key, Amount: amount}
}
func debit(key string, amount int64) Input {
	return Input{Kind: KindDebit, Asset: Asset, Key: key, Amount: amount}
}
func hold(key string, amount, ttl int64) Input {
	return Input{Kind: KindHold, Asset: Asset, Key: key, Amount: amount, TTLMs: ttl}
}
func capture(key, holdKey string) Input {
	return Input{Kind: KindCapture, Asset: Asset, Key: key, HoldKey: holdKey}
}
func release(key, holdKey string) Input {
	return Input{Kind: KindRelease, Asset: Asset, Key: key, HoldKey: holdKey}
}

var readIn = Input{Kind: KindRead, Asset: Asset}

// modelCase is a history and whether the model must find it linearizable.
type modelCase struct {
	name    string
	history []porcupine.Operation
	want    bool
}

func checkModelCases(t *testing.T, cases []modelCase) {
	t.Helper()
	model := Model()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(model, c.history); got != c.want {
				t.Fatalf("linearizable = %v, want %v", got, c.want)
			}
		})
	}
}

func TestModel(t *testing.T) {
	cases := []modelCase{
		{"sequential credit debit read", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, debit("k2", 20), ok(2, 101, 30, 0)),
			op(0, 40, 50, readIn, read(30, 0, false)),
		}, true},
		{"stale read after an acknowledged credit", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 20, 30, readIn, read(0, 0, false)),
		}, false},
		{"concurrent read may see either", []porcupine.Operation{
			op(0, 0, 30, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 10, 20, readIn, read(0, 0, false)),
		}, true},
		{"insufficient funds is legal only without the credit", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, debit("k2", 40), Output{Status: Known, Code: ledger.CodeInsufficientFunds, Seq: 2, TimeMs: 101}),
		}, false},
		{"debit beyond balance fails", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, debit("k2", 60), fail(ledger.CodeInsufficientFunds, 2, 101)),
		}, true},
		{"a credit applied twice", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, readIn, read(100, 0, false)),
		}, false},
		{"indeterminate credit may have applied", []porcupine.Operation{
			op(0, 0, ReturnNever, credit("k1", 50), indeterminate),
			op(1, 20, 30, readIn, read(50, 0, false)),
			op(1, 40, 50, readIn, read(50, 0, false)),
		}, true},
		{"indeterminate credit may not have applied", []porcupine.Operation{
			op(0, 0, ReturnNever, credit("k1", 50), indeterminate),
			op(1, 20, 30, readIn, read(0, 0, false)),
		}, true},
		{"indeterminate credit cannot un-apply", []porcupine.Operation{
			op(0, 0, ReturnNever, credit("k1", 50), indeterminate),
			op(1, 20, 30, readIn, read(50, 0, false)),
			op(1, 40, 50, readIn, read(0, 0, false)),
		}, false},
		{"not applied must have no effect", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), Output{Status: NotApplied, Code: ledger.CodeNotLeader}),
			op(1, 20, 30, readIn, read(50, 0, false)),
		}, false},
		{"log time must not go backwards", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, credit("k2", 50), ok(2, 99, 100, 0)),
		}, false},
		{"seq must grow", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(5, 100, 50, 0)),
			op(0, 20, 30, credit("k2", 50), ok(4, 100, 100, 0)),
		}, false},
		{"hold capture", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, debit("k3", 30), Output{Status: Known, Code: ledger.CodeInsufficientFunds, Seq: 3, TimeMs: 120, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 50, Held: 30}),
			op(0, 60, 70, capture("k4", "h1"), settled(ok(4, 130, 20, 0), 30, 0)),
			op(0, 80, 90, release("k5", "h1"), fail(ledger.CodeHoldClosed, 5, 140)),
			op(0, 100, 110, readIn, read(20, 0, false)),
		}, true},
		{"a partial capture releases the rest", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, Input{Kind: KindCapture, Asset: Asset, Key: "k3", HoldKey: "h1", Amount: 12}, settled(ok(3, 120, 38, 0), 12, 18)),
		}, true},
		{"a capture reports another amount than it took", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, Input{Kind: KindCapture, Asset: Asset, Key: "k3", HoldKey: "h1", Amount: 12}, settled(ok(3, 120, 38, 0), 30, 0)),
		}, false},
		{"a release reports nothing released", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, release("k3", "h1"), ok(3, 120, 50, 0)),
		}, false},
		{"hold expires by log time", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, capture("k3", "h1"), fail(ledger.CodeHoldExpired, 3, 1110)),
			op(0, 60, 70, readIn, read(50, 0, false)),
		}, true},
		{"a refused capture moves nothing", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, capture("k3", "h1"), settled(fail(ledger.CodeHoldExpired, 3, 1110), 0, 30)),
		}, false},
		{"a capture the edge refused moves nothing", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 40, 50, capture("k3", "h9"), settled(Output{Status: NotApplied, Code: ledger.CodeHoldNotFound}, 30, 0)),
		}, false},
		{"hold cannot expire early", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, capture("k3", "h1"), fail(ledger.CodeHoldExpired, 3, 1109)),
		}, false},
		{"a read may see an expiry no op of the account saw", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, readIn, read(50, 0, false)),
			// The expiry happened at >= 1110: an op at 1105 is too early.
			op(0, 60, 70, credit("k4", 1), ok(3, 1105, 51, 0)),
		}, false},
		{"expired hold cannot be captured after a read saw the expiry", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, readIn, read(50, 0, false)),
			op(0, 60, 70, capture("k4", "h1"), ok(3, 1200, 20, 0)),
		}, false},
		{"frozen account refuses debits", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, Input{Kind: KindFreeze, Asset: Asset, Key: "k2"}, Output{Status: Known, Code: ledger.CodeOK, Seq: 2, TimeMs: 101, HasAccount: true, Asset: Asset, Posted: 50, State: ledger.StateFrozen}),
			op(0, 40, 50, debit("k3", 10), Output{Status: Known, Code: ledger.CodeAccountFrozen, Seq: 3, TimeMs: 102, HasAccount: true, Asset: Asset, Posted: 50, State: ledger.StateFrozen}),
			op(0, 60, 70, readIn, read(50, 0, true)),
			op(0, 80, 90, Input{Kind: KindUnfreeze, Asset: Asset, Key: "k4"}, Output{Status: Known, Code: ledger.CodeOK, Seq: 4, TimeMs: 103, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 50}),
			op(0, 100, 110, debit("k5", 10), ok(5, 104, 40, 0)),
		}, true},
		{"indeterminate debit resolves insufficient funds either way", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 20, ReturnNever, debit("k2", 40), indeterminate),
			op(0, 30, 40, debit("k3", 40), fail(ledger.CodeInsufficientFunds, 3, 110)),
			op(0, 50, 60, readIn, read(10, 0, false)),
		}, true},
	}
	checkModelCases(t, cases)
}

// linked builds a linked request of member "a"'s ops.
func linked(ops ...Input) Input {
	for i := range ops {
		ops[i].Member = "a"
	}
	return Input{Kind: KindLinked, Ops: ops}
}

// hnf is the edge's HOLD_NOT_FOUND refusal of a linked request, blaming
// its op number blamed (1-based).
func hnf(blamed int) Output {
	return Output{Status: NotApplied, Code: ledger.CodeHoldNotFound, Blamed: blamed}
}

// linkedOut is the Known outcome of a linked request with the ops' outputs.
func linkedOut(outs ...Output) Output {
	out := Output{Status: Known, Code: ledger.CodeOK, Ops: outs}
	for _, o := range outs {
		if o.Code != ledger.CodeOK && o.Code != ledger.CodeLinkedFailed {
			out.Code = o.Code
		}
	}
	return out
}

// TestModelLinked: a linked request applies all its ops in one log entry,
// each seeing the ones before it, or none of them; the model must refuse
// every history in which part of one took effect.
func TestModelLinked(t *testing.T) {
	lf := func(seq uint64, t int64) Output { return fail(ledger.CodeLinkedFailed, seq, t) }
	cases := []modelCase{
		{"all applied, each op sees the ones before it", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(ok(1, 100, 50, 0), ok(2, 100, 20, 0))),
			op(0, 20, 30, readIn, read(20, 0, false)),
		}, true},
		{"an op reports the state before an earlier op of its request", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(ok(1, 100, 50, 0), ok(2, 100, 20, 0))),
			op(0, 0, 10, linked(credit("k3", 5), credit("k4", 5)), linkedOut(ok(3, 101, 25, 0), ok(4, 101, 25, 0))),
		}, false},
		{"a read sees only the first op", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(ok(1, 100, 50, 0), ok(2, 100, 20, 0))),
			op(0, 20, 30, readIn, read(50, 0, false)),
		}, false},
		{"one fails: nothing applied", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 80)), linkedOut(lf(1, 100), fail(ledger.CodeInsufficientFunds, 2, 100))),
			op(0, 20, 30, readIn, read(0, 0, false)),
		}, true},
		{"one fails but the others applied", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 80)), linkedOut(lf(1, 100), fail(ledger.CodeInsufficientFunds, 2, 100))),
			op(0, 20, 30, readIn, read(50, 0, false)),
		}, false},
		{"a failure the rules do not give", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(lf(1, 100), fail(ledger.CodeInsufficientFunds, 2, 100))),
		}, false},
		{"the wrong op blamed", []porcupine.Operation{
			op(0, 0, 10, linked(debit("k1", 80), credit("k2", 50)), linkedOut(lf(1, 100), fail(ledger.CodeInsufficientFunds, 2, 100))),
		}, false},
		{"a failed request describes the account", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 80)), linkedOut(lf(1, 100),
				Output{Status: Known, Code: ledger.CodeInsufficientFunds, Seq: 2, TimeMs: 100, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 50})),
		}, false},
		{"ops of one request at two log times", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(ok(1, 100, 50, 0), ok(2, 101, 20, 0))),
		}, false},
		{"ops of one request out of sequence", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), debit("k2", 30)), linkedOut(ok(2, 100, 50, 0), ok(1, 100, 20, 0))),
		}, false},
		{"hold and capture it in one request", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, linked(hold("h1", 30, 1000), capture("k3", "h1")), linkedOut(ok(2, 110, 50, 30), settled(ok(3, 110, 20, 0), 30, 0))),
			op(0, 40, 50, readIn, read(20, 0, false)),
		}, true},
		{"indeterminate: all of it", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 20, ReturnNever, linked(debit("k2", 10), hold("h1", 30, 1000)), Output{Status: Indeterminate, Code: ledger.CodeUnavailable}),
			op(0, 30, 40, readIn, read(40, 30, false)),
		}, true},
		{"indeterminate: none of it", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 20, ReturnNever, linked(debit("k2", 10), hold("h1", 30, 1000)), Output{Status: Indeterminate, Code: ledger.CodeUnavailable}),
			op(0, 30, 40, readIn, read(50, 0, false)),
		}, true},
		{"indeterminate: part of it", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(1, 20, ReturnNever, linked(debit("k2", 10), credit("k3", 3)), Output{Status: Indeterminate, Code: ledger.CodeUnavailable}),
			op(0, 30, 40, readIn, read(40, 0, false)),
		}, false},
		{"refused for a missing hold that existed", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, linked(credit("k3", 1), capture("k4", "h1")), Output{Status: NotApplied, Code: ledger.CodeHoldNotFound}),
		}, false},
		{"refused for a missing hold: one of them is", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, linked(release("k3", "h1"), capture("k4", "ghost")), Output{Status: NotApplied, Code: ledger.CodeHoldNotFound}),
		}, true},
		{"refused for a missing hold before it was opened", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 50, linked(credit("k3", 1), capture("k4", "h1")), Output{Status: NotApplied, Code: ledger.CodeHoldNotFound}),
			op(1, 30, 40, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
		}, true},
		{"blamed: the second capture's hold missing, the first's there", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, linked(release("k3", "h1"), capture("k4", "ghost")), hnf(2)),
		}, true},
		{"blamed: an op whose hold exists", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, linked(release("k3", "h1"), capture("k4", "ghost")), hnf(1)),
		}, false},
		{"blamed: a later op though an earlier hold is missing", []porcupine.Operation{
			op(0, 0, 10, linked(capture("k3", "ghost1"), capture("k4", "ghost2")), hnf(2)),
		}, false},
		{"blamed: a capture of the request's own hold", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, linked(hold("h1", 30, 1000), capture("k3", "h1")), hnf(2)),
		}, false},
		{"blamed: not a capture or release", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), capture("k3", "ghost")), hnf(1)),
		}, false},
		{"not applied: none of it", []porcupine.Operation{
			op(0, 0, 10, linked(credit("k1", 50), credit("k2", 5)), Output{Status: NotApplied, Code: ledger.CodeNotLeader}),
			op(0, 20, 30, readIn, read(50, 0, false)),
		}, false},
	}
	checkModelCases(t, cases)
}

func TestMembersSpreadOverShards(t *testing.T) {
	for _, shards := range []int{2, 3, 5} {
		ms := Members("p-", 12, shards)
		if len(ms) != 12 {
			t.Fatalf("%d shards: %d members", shards, len(ms))
		}
		per := map[int]int{}
		for _, m := range ms {
			per[ledger.ShardOf(Program, m, shards)]++
		}
		for s := 0; s < shards; s++ {
			if per[s] < 12/shards {
				t.Fatalf("%d shards: shard %d has %d members: %v", shards, s, per[s], per)
			}
		}
	}
}

// sv is in on the member's stored-value account.
func sv(in Input) Input {
	in.Asset = StoredValue
	return in
}

// svOut is out describing the stored-value account.
func svOut(out Output) Output {
	out.Asset = StoredValue
	return out
}

// TestModelTwoAccounts: each member has a points and a stored-value account;
// an op acts on its own account only, a result must describe that account,
// and a linked request across both applies on both or on neither.
func TestModelTwoAccounts(t *testing.T) {
	readSV := sv(readIn)
	cases := []modelCase{
		{"recharge with bonus points", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 2000)), credit("k2", 50)),
				linkedOut(svOut(ok(1, 100, 2000, 0)), ok(2, 100, 50, 0))),
			op(0, 20, 30, readSV, svOut(read(2000, 0, false))),
			op(0, 40, 50, readIn, read(50, 0, false)),
		}, true},
		{"recharge applied, its bonus lost", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 2000)), credit("k2", 50)),
				linkedOut(svOut(ok(1, 100, 2000, 0)), ok(2, 100, 50, 0))),
			op(0, 40, 50, readIn, read(0, 0, false)),
		}, false},
		{"a failed spend leaves the points it would earn unposted", []porcupine.Operation{
			op(0, 0, 10, linked(sv(debit("k1", 100)), credit("k2", 1)),
				linkedOut(fail(ledger.CodeInsufficientFunds, 1, 100), fail(ledger.CodeLinkedFailed, 2, 100))),
			op(0, 20, 30, readIn, read(0, 0, false)),
		}, true},
		{"a failed spend posts its points", []porcupine.Operation{
			op(0, 0, 10, linked(sv(debit("k1", 100)), credit("k2", 1)),
				linkedOut(fail(ledger.CodeInsufficientFunds, 1, 100), fail(ledger.CodeLinkedFailed, 2, 100))),
			op(0, 20, 30, readIn, read(1, 0, false)),
		}, false},
		{"indeterminate across both: one account only", []porcupine.Operation{
			op(1, 0, ReturnNever, linked(sv(credit("k1", 500)), credit("k2", 5)), indeterminate),
			op(0, 20, 30, readSV, svOut(read(500, 0, false))),
			op(0, 40, 50, readIn, read(0, 0, false)),
		}, false},
		{"indeterminate across both: both", []porcupine.Operation{
			op(1, 0, ReturnNever, linked(sv(credit("k1", 500)), credit("k2", 5)), indeterminate),
			op(0, 20, 30, readSV, svOut(read(500, 0, false))),
			op(0, 40, 50, readIn, read(5, 0, false)),
		}, true},
		{"a credit answered with the other account", []porcupine.Operation{
			op(0, 0, 10, sv(credit("k1", 50)), ok(1, 100, 50, 0)),
		}, false},
		{"a freeze of points leaves stored value active", []porcupine.Operation{
			op(0, 0, 10, Input{Kind: KindFreeze, Asset: Asset, Key: "f"}, Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100, HasAccount: true, Asset: Asset, State: ledger.StateFrozen}),
			op(0, 20, 30, sv(credit("k1", 50)), svOut(ok(2, 101, 50, 0))),
			op(0, 40, 50, credit("k2", 5), Output{Status: Known, Code: ledger.CodeAccountFrozen, Seq: 3, TimeMs: 102, HasAccount: true, Asset: Asset, State: ledger.StateFrozen}),
		}, true},
		{"a frozen points account refuses a stored-value credit", []porcupine.Operation{
			op(0, 0, 10, Input{Kind: KindFreeze, Asset: Asset, Key: "f"}, Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100, HasAccount: true, Asset: Asset, State: ledger.StateFrozen}),
			op(0, 20, 30, sv(credit("k1", 50)), fail(ledger.CodeAccountFrozen, 2, 101)),
		}, false},
		{"a stored-value hold is captured from stored value", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 50)), credit("k2", 7)), linkedOut(svOut(ok(1, 100, 50, 0)), ok(2, 100, 7, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 1000)), svOut(ok(3, 110, 50, 30))),
			op(0, 40, 50, sv(capture("k4", "h1")), svOut(settled(ok(4, 120, 20, 0), 30, 0))),
			op(0, 60, 70, readIn, read(7, 0, false)),
		}, true},
		{"a stored-value capture reported on points", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 50)), credit("k2", 30)), linkedOut(svOut(ok(1, 100, 50, 0)), ok(2, 100, 30, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 1000)), svOut(ok(3, 110, 50, 30))),
			op(0, 40, 50, sv(capture("k4", "h1")), settled(ok(4, 120, 0, 0), 30, 0)),
		}, false},
		{"a recharge past the card's limit fails, and its bonus with it", []porcupine.Operation{
			op(0, 0, 10, sv(credit("k1", 2400)), svOut(ok(1, 100, 2400, 0))),
			op(0, 20, 30, linked(sv(credit("k2", 101)), credit("k3", 10)),
				linkedOut(fail(ledger.CodeLimitExceeded, 2, 101), fail(ledger.CodeLinkedFailed, 3, 101))),
			op(0, 40, 50, sv(credit("k4", 100)), svOut(ok(4, 102, 2500, 0))),
			op(0, 60, 70, readIn, read(0, 0, false)),
		}, true},
		{"a credit past the card's limit applied", []porcupine.Operation{
			op(0, 0, 10, sv(credit("k1", 2400)), svOut(ok(1, 100, 2400, 0))),
			op(0, 20, 30, sv(credit("k2", 101)), svOut(ok(2, 101, 2501, 0))),
		}, false},
		{"an expiry seen on points implies the earlier one on stored value", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 50)), credit("k2", 50)), linkedOut(svOut(ok(1, 100, 50, 0)), ok(2, 100, 50, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 110)), svOut(ok(3, 100, 50, 30))), // expires at 210
			op(0, 40, 50, hold("h2", 20, 200), ok(4, 100, 50, 20)),            // expires at 300
			op(0, 60, 70, readIn, read(50, 0, false)),
			op(0, 80, 90, readSV, svOut(read(50, 30, false))),
		}, false},
		{"a read of points leaves the stored-value expiry to come", []porcupine.Operation{
			op(0, 0, 10, linked(sv(credit("k1", 50)), credit("k2", 50)), linkedOut(svOut(ok(1, 100, 50, 0)), ok(2, 100, 50, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 110)), svOut(ok(3, 100, 50, 30))),
			op(0, 60, 70, readIn, read(50, 0, false)),
			op(0, 80, 90, sv(credit("k5", 1)), svOut(ok(5, 150, 51, 30))),
		}, true},
		{"the edge finds no stored-value hold that exists", []porcupine.Operation{
			op(0, 0, 10, sv(credit("k1", 50)), svOut(ok(1, 100, 50, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 1000)), svOut(ok(2, 100, 50, 30))),
			op(0, 40, 50, sv(capture("k3", "h1")), Output{Status: NotApplied, Code: ledger.CodeHoldNotFound}),
		}, false},
		{"a stored-value hold expiring, seen from points", []porcupine.Operation{
			op(0, 0, 10, sv(credit("k1", 50)), svOut(ok(1, 100, 50, 0))),
			op(0, 20, 30, sv(hold("h1", 30, 1000)), svOut(ok(2, 110, 50, 30))),
			op(0, 40, 50, readIn, read(0, 0, false)),
			op(0, 60, 70, readSV, svOut(read(50, 0, false))),
			op(0, 80, 90, credit("k3", 5), ok(3, 1200, 5, 0)),
		}, true},
	}
	checkModelCases(t, cases)
}

// closeIn closes member "a"'s points account; closed is its success.
func closeIn(key string) Input { return Input{Kind: KindClose, Asset: Asset, Key: key} }

func closed(seq uint64, t int64) Output {
	return Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: t, HasAccount: true, Asset: Asset, State: ledger.StateClosed}
}

// TestModelLostCard: a card reported lost takes value but spends none, and
// its account cannot be frozen until it is found (nor a frozen one reported
// lost). Closing needs an empty account and is final.
func TestModelLostCard(t *testing.T) {
	lostIn := Input{Kind: KindReportLost, Asset: Asset, Key: "l"}
	foundIn := Input{Kind: KindReportFound, Asset: Asset, Key: "f"}
	lost := func(seq uint64, t, posted, held int64) Output {
		o := ok(seq, t, posted, held)
		o.State = ledger.StateLost
		return o
	}
	cases := []modelCase{
		{"lost: credits yes, spending no, found again", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, lostIn, lost(2, 101, 50, 0)),
			op(0, 40, 50, credit("k3", 5), lost(3, 102, 55, 0)),
			op(0, 60, 70, debit("k4", 5), Output{Status: Known, Code: ledger.CodeAccountLost, Seq: 4, TimeMs: 103, HasAccount: true, Asset: Asset, Posted: 55, State: ledger.StateLost}),
			op(0, 80, 90, hold("h1", 5, 1000), fail(ledger.CodeAccountLost, 5, 104)),
			op(0, 100, 110, Input{Kind: KindFreeze, Asset: Asset, Key: "z"}, fail(ledger.CodeInvalidState, 6, 105)),
			op(0, 120, 130, readIn, Output{Status: Known, Code: ledger.CodeOK, HasAccount: true, Asset: Asset, Posted: 55, State: ledger.StateLost}),
			op(0, 140, 150, foundIn, ok(7, 106, 55, 0)),
			op(0, 160, 170, debit("k8", 5), ok(8, 107, 50, 0)),
		}, true},
		{"a lost card spends", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, lostIn, lost(2, 101, 50, 0)),
			op(0, 40, 50, debit("k3", 5), lost(3, 102, 45, 0)),
		}, false},
		{"a lost card's capture", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 50), ok(1, 100, 50, 0)),
			op(0, 20, 30, hold("h1", 30, 1000), ok(2, 110, 50, 30)),
			op(0, 40, 50, lostIn, lost(3, 111, 50, 30)),
			op(0, 60, 70, capture("k4", "h1"), fail(ledger.CodeAccountLost, 4, 112)),
			op(0, 80, 90, release("k5", "h1"), settled(lost(5, 113, 50, 0), 0, 30)),
		}, true},
		{"a frozen account reported lost", []porcupine.Operation{
			op(0, 0, 10, Input{Kind: KindFreeze, Asset: Asset, Key: "z"}, Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100, HasAccount: true, Asset: Asset, State: ledger.StateFrozen}),
			op(0, 20, 30, lostIn, lost(2, 101, 0, 0)),
		}, false},
		{"close: only with nothing posted or held, then for good", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, closeIn("c1"), Output{Status: Known, Code: ledger.CodeBalanceNotZero, Seq: 2, TimeMs: 101, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 5}),
			op(0, 40, 50, debit("k3", 5), ok(3, 102, 0, 0)),
			op(0, 60, 70, closeIn("c2"), closed(4, 103)),
			op(0, 80, 90, credit("k5", 5), Output{Status: Known, Code: ledger.CodeAccountClosed, Seq: 5, TimeMs: 104, HasAccount: true, Asset: Asset, State: ledger.StateClosed}),
			op(0, 100, 110, Input{Kind: KindUnfreeze, Asset: Asset, Key: "u"}, Output{Status: Known, Code: ledger.CodeAccountClosed, Seq: 6, TimeMs: 105, HasAccount: true, Asset: Asset, State: ledger.StateClosed}),
			op(0, 120, 130, readIn, Output{Status: Known, Code: ledger.CodeOK, HasAccount: true, Asset: Asset, State: ledger.StateClosed}),
			op(0, 140, 150, sv(credit("k8", 5)), svOut(ok(8, 106, 5, 0))),
		}, true},
		{"a hold settled before the close is closed after it", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, hold("h1", 5, 1000), ok(2, 101, 5, 5)),
			op(0, 40, 50, capture("k3", "h1"), settled(ok(3, 102, 0, 0), 5, 0)),
			op(0, 60, 70, closeIn("c4"), closed(4, 103)),
			op(0, 80, 90, release("k5", "h1"), Output{Status: Known, Code: ledger.CodeHoldClosed, Seq: 5, TimeMs: 104, HasAccount: true, Asset: Asset, State: ledger.StateClosed}),
		}, true},
		{"a state change on a closed account reports it active", []porcupine.Operation{
			op(0, 0, 10, closeIn("c1"), closed(1, 100)),
			op(0, 20, 30, Input{Kind: KindFreeze, Asset: Asset, Key: "f"}, Output{Status: Known, Code: ledger.CodeAccountClosed, Seq: 2, TimeMs: 101, HasAccount: true, State: ledger.StateActive, Asset: Asset}),
		}, false},
		{"a closed account takes a credit", []porcupine.Operation{
			op(0, 0, 10, closeIn("c1"), closed(1, 100)),
			op(0, 20, 30, credit("k2", 5), ok(2, 101, 5, 0)),
		}, false},
		{"a close with a hold open", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, hold("h1", 5, 1000), ok(2, 101, 5, 5)),
			op(0, 40, 50, debit("k3", 5), fail(ledger.CodeInsufficientFunds, 3, 102)),
			op(0, 60, 70, closeIn("c4"), closed(4, 103)),
		}, false},
		{"a cash-out: a linked debit of everything, then the close", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, linked(debit("k2", 5), closeIn("c3")), linkedOut(ok(2, 101, 0, 0), closed(3, 101))),
			op(0, 40, 50, credit("k4", 5), Output{Status: Known, Code: ledger.CodeAccountClosed, Seq: 4, TimeMs: 102, HasAccount: true, Asset: Asset, State: ledger.StateClosed}),
		}, true},
		{"a cash-out that missed a credit fails whole", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, credit("k2", 3), ok(2, 101, 8, 0)),
			op(0, 40, 50, linked(debit("k3", 5), closeIn("c4")), linkedOut(fail(ledger.CodeLinkedFailed, 3, 102), fail(ledger.CodeBalanceNotZero, 4, 102))),
			op(0, 60, 70, readIn, read(8, 0, false)),
		}, true},
		{"a failed cash-out keeps its debit", []porcupine.Operation{
			op(0, 0, 10, credit("k1", 5), ok(1, 100, 5, 0)),
			op(0, 20, 30, credit("k2", 3), ok(2, 101, 8, 0)),
			op(0, 40, 50, linked(debit("k3", 5), closeIn("c4")), linkedOut(fail(ledger.CodeLinkedFailed, 3, 102), fail(ledger.CodeBalanceNotZero, 4, 102))),
			op(0, 60, 70, readIn, read(3, 0, false)),
		}, false},
		{"a read misses a lost report", []porcupine.Operation{
			op(0, 0, 10, lostIn, lost(1, 100, 0, 0)),
			op(0, 20, 30, readIn, read(0, 0, false)),
		}, false},
	}
	checkModelCases(t, cases)
}
