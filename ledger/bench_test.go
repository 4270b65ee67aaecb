package ledger

import (
	"fmt"
	"strconv"
	"testing"
)

// benchStore has one program with POINTS and members m-000000..m-000999,
// each with 10^9 points, so debits never run dry.
func benchStore(b *testing.B) *MemStore {
	s := NewMemStore()
	ops := []Op{{Kind: OpDefineAsset, Program: "shop", Asset: "POINTS", IdempotencyKey: "define"}}
	for i := range 1000 {
		m := fmt.Sprintf("m-%06d", i)
		ops = append(ops,
			Op{Kind: OpOpenAccount, Program: "shop", Member: m, Asset: "POINTS", IdempotencyKey: "open-" + m},
			Op{Kind: OpCredit, Program: "shop", Member: m, Asset: "POINTS", AmountMinor: 1e9, IdempotencyKey: "fund-" + m})
	}
	res, err := Apply(s, t0, MaxVersion, Request{Ops: ops})
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range res {
		if !r.OK() {
			b.Fatal(r.Message)
		}
	}
	return s
}

// BenchmarkApply measures ApplyCommand on a MemStore: commands of 100
// single-op requests (credits, debits and holds), as a leader packs
// concurrent calls. Building the commands is not timed.
func BenchmarkApply(b *testing.B) {
	const requestsPerCommand = 100
	s := benchStore(b)
	kinds := []OpKind{OpCredit, OpDebit, OpCredit, OpHold}
	last := t0
	seq := 0
	c := Command{Requests: make([]Request, requestsPerCommand)}
	ops := make([]Op, requestsPerCommand)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for j := range c.Requests {
			seq++
			k := kinds[seq%len(kinds)]
			ops[j] = Op{Kind: k, Program: "shop", Member: "m-" + fmt.Sprintf("%06d", seq%1000), Asset: "POINTS",
				AmountMinor: 10, IdempotencyKey: "b-" + strconv.Itoa(seq)}
			if k == OpHold {
				ops[j].HoldTTLMs = 1000
			}
			c.Requests[j] = Request{Ops: ops[j : j+1]}
		}
		c.TimeMs = last + 1
		b.StartTimer()
		now, _, err := applyAt(s, last, c)
		if err != nil {
			b.Fatal(err)
		}
		last = now
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*requestsPerCommand), "ns/ledger-op")
}

// BenchmarkApplyLinked measures a linked request of 4 ops on one member.
func BenchmarkApplyLinked(b *testing.B) {
	s := benchStore(b)
	seq := 0
	ops := make([]Op, 4)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		m := fmt.Sprintf("m-%06d", i%1000)
		for j := range ops {
			seq++
			ops[j] = Op{Kind: OpCredit, Program: "shop", Member: m, Asset: "POINTS", AmountMinor: 10,
				IdempotencyKey: "l-" + strconv.Itoa(seq)}
		}
		ops[3].Kind = OpDebit
		b.StartTimer()
		if _, err := Apply(s, t0, MaxVersion, Request{Linked: true, Ops: ops}); err != nil {
			b.Fatal(err)
		}
	}
}
