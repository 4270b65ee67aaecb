package raftstore

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

const benchEntryBytes = 256

func benchLogs(next *uint64, n int, data []byte) []*raft.Log {
	logs := make([]*raft.Log, n)
	for i := range logs {
		*next++
		logs[i] = &raft.Log{Index: *next, Term: 1, Type: raft.LogCommand, Data: data}
	}
	return logs
}

// BenchmarkStoreLogs measures one group appending batches, each a synced
// commit.
func BenchmarkStoreLogs(b *testing.B) {
	for _, batch := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db := openTest(b, b.TempDir())
			defer db.Close()
			g := db.Group(1)
			data := make([]byte, benchEntryBytes)
			var next uint64
			b.SetBytes(int64(batch * benchEntryBytes))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := g.StoreLogs(benchLogs(&next, batch, data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStoreLogsParallelGroups has many groups appending at once, which
// is where sharing one WAL pays: concurrent synced commits share fsyncs.
func BenchmarkStoreLogsParallelGroups(b *testing.B) {
	for _, batch := range []int{1, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db := openTest(b, b.TempDir())
			defer db.Close()
			data := make([]byte, benchEntryBytes)
			var shard atomic.Uint32
			b.SetBytes(int64(batch * benchEntryBytes))
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				g := db.Group(shard.Add(1))
				var next uint64
				for pb.Next() {
					if err := g.StoreLogs(benchLogs(&next, batch, data)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGetLog measures reading back recent entries, as replication does.
func BenchmarkGetLog(b *testing.B) {
	db := openTest(b, b.TempDir())
	defer db.Close()
	g := db.Group(1)
	var next uint64
	const stored = 4096
	if err := g.StoreLogs(benchLogs(&next, stored, make([]byte, benchEntryBytes))); err != nil {
		b.Fatal(err)
	}
	var l raft.Log
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := g.GetLog(uint64(i%stored)+1, &l); err != nil {
			b.Fatal(err)
		}
	}
}
