package pebblestall

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
)

func TestCounterPairsBeginAndEnd(t *testing.T) {
	var c Counter
	t0 := time.Unix(1000, 0)
	c.end(t0) // an end without a begin counts nothing
	c.begin(t0)
	c.begin(t0.Add(time.Second)) // a nested begin neither restarts nor double-counts
	n, d := c.Stalls()
	require.Equal(t, uint64(1), n)
	require.Zero(t, d, "an unfinished stall has no duration yet")
	c.end(t0.Add(300 * time.Millisecond))
	c.end(t0.Add(time.Hour))
	c.begin(t0.Add(2 * time.Second))
	c.end(t0.Add(2*time.Second + 50*time.Millisecond))
	n, d = c.Stalls()
	require.Equal(t, uint64(2), n)
	require.Equal(t, 350*time.Millisecond, d)
}

func TestListenerFeedsCounter(t *testing.T) {
	var c Counter
	l := c.Listener()
	l.WriteStallBegin(pebble.WriteStallBeginInfo{Reason: "memtable"})
	l.WriteStallEnd()
	n, _ := c.Stalls()
	require.Equal(t, uint64(1), n)
}
