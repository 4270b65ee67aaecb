package fsm

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/ledger"
)

// BenchmarkApplyBatch measures the FSM's apply path: decode, rules, and one
// Pebble batch per Raft batch, for uniform and single-hot-account traffic.
func BenchmarkApplyBatch(b *testing.B) {
	for _, tc := range []struct {
		name    string
		members int
	}{{"uniform", 10000}, {"hot", 1}} {
		for _, perEntry := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/ops-per-entry=%d", tc.name, perEntry), func(b *testing.B) {
				db, f := openFSM(&testing.T{}, b.TempDir(), 0)
				defer db.Close()
				var setup []ledger.Op
				setup = append(setup, define("d", "PTS", 0))
				for m := 0; m < tc.members; m++ {
					setup = append(setup, open(fmt.Sprintf("o%d", m), fmt.Sprintf("m%d", m), "PTS"))
				}
				index := uint64(1)
				for i := 0; i < len(setup); i += 5000 {
					f.ApplyBatch([]*raft.Log{logOf(index, ledger.Command{TimeMs: 1, Requests: []ledger.Request{{Ops: setup[i:min(i+5000, len(setup))]}}})})
					index++
				}
				const entriesPerBatch = 16
				b.ResetTimer()
				n := 0
				for n < b.N {
					logs := make([]*raft.Log, 0, entriesPerBatch)
					for e := 0; e < entriesPerBatch && n < b.N; e++ {
						var reqs []ledger.Request
						for o := 0; o < perEntry && n < b.N; o++ {
							m := fmt.Sprintf("m%d", n%tc.members)
							reqs = append(reqs, ledger.Request{Ops: []ledger.Op{move(ledger.OpCredit, fmt.Sprintf("k%d", n), m, "PTS", 1, 0)}})
							n++
						}
						logs = append(logs, logOf(index, ledger.Command{TimeMs: int64(index), Requests: reqs}))
						index++
					}
					f.ApplyBatch(logs)
				}
			})
		}
	}
}
