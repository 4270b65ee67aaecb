// Package pebblestall counts Pebble write stalls: the times Pebble held every
// write back because its memtables or L0 were full. A stall in the state DB
// holds back every apply on the node; one in the Raft log DB holds back every
// append. Either shows up as a latency spike for all shards at once, so an
// operator needs to see them next to the request latencies.
package pebblestall

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Counter accumulates the write stalls of one Pebble DB. The zero value is
// ready to use; attach it with Listener before the DB opens.
type Counter struct {
	count atomic.Uint64
	nanos atomic.Int64

	mu    sync.Mutex // guards began
	began time.Time  // start of the stall in progress; zero when none
}

// Listener returns the event listener that feeds c. Pebble calls
// WriteStallBegin and WriteStallEnd in pairs from its commit pipeline.
func (c *Counter) Listener() *pebble.EventListener {
	return &pebble.EventListener{
		WriteStallBegin: func(pebble.WriteStallBeginInfo) { c.begin(time.Now()) },
		WriteStallEnd:   func() { c.end(time.Now()) },
	}
}

func (c *Counter) begin(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.began.IsZero() {
		c.began = now
		c.count.Add(1)
	}
}

func (c *Counter) end(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.began.IsZero() {
		c.nanos.Add(int64(now.Sub(c.began)))
		c.began = time.Time{}
	}
}

// Stalls reports how many write stalls began and how long the finished ones
// lasted in total.
func (c *Counter) Stalls() (count uint64, total time.Duration) {
	return c.count.Load(), time.Duration(c.nanos.Load())
}
