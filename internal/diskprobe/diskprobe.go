// Package diskprobe measures how long a disk takes to make a small write
// durable, and says what a Tally cluster on such a disk needs.
//
// Every Raft append waits for a sync on the leader and then one on a
// follower, and every vote is synced before it is granted. On a disk whose
// syncs take hundreds of milliseconds (a throttled cloud volume, a network
// file system) commits slow down by that much, and with the default 500 ms
// Raft timeouts elections restart before they finish: with this machine's
// disk throttled to 20 write IOPS (blkio cgroup; syncs of 200-300 ms), a
// fresh cluster made 192 candidacies and still had no leader of one shard
// after 3 minutes; with SlowHeartbeatTimeout, SlowElectionTimeout and
// SlowLeaseTimeout it had both shards' leaders within 20 s
// (docs/BENCHMARKS.md, "Slow disks"). Tests that start clusters use it to
// pick those timeouts on such a disk, as an operator would.
package diskprobe

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// Result is one probe: the sync latencies of Syncs synced writes.
type Result struct {
	Syncs  int           `json:"syncs"`
	Median time.Duration `json:"median_ns"`
	Max    time.Duration `json:"max_ns"`
}

func (r Result) String() string {
	return fmt.Sprintf("median %s, max %s over %d syncs", r.Median.Round(10*time.Microsecond),
		r.Max.Round(10*time.Microsecond), r.Syncs)
}

// Slow reports whether the probe found a slow disk (SlowMedian or more).
func (r Result) Slow() bool { return r.Median >= SlowMedian }

// SlowMedian is the median sync latency from which a disk counts as slow:
// an SSD syncs a 4 KiB write in well under a millisecond to a few, a
// network or throttled volume in tens to hundreds.
const SlowMedian = 20 * time.Millisecond

// Raft timeouts for a cluster on a slow disk.
const (
	SlowHeartbeatTimeout = time.Second
	SlowElectionTimeout  = 2 * time.Second
	SlowLeaseTimeout     = time.Second
)

// SlowTimeoutFlags is how tallyd is told the slow-disk timeouts.
func SlowTimeoutFlags() string {
	return fmt.Sprintf("--heartbeat-timeout %s --election-timeout %s --leader-lease-timeout %s",
		SlowHeartbeatTimeout, SlowElectionTimeout, SlowLeaseTimeout)
}

// DefaultSyncs is how many synced writes a probe makes: enough for a median,
// few enough to take a few milliseconds on a normal disk.
const DefaultSyncs = 20

// Probe writes 4 KiB n times to a scratch file in dir, syncing after each
// write as a WAL does, and reports the sync latencies. The file is removed
// afterwards.
func Probe(dir string, n int) (Result, error) {
	if n <= 0 {
		return Result{}, fmt.Errorf("diskprobe: %d syncs", n)
	}
	f, err := os.CreateTemp(dir, "sync-probe-")
	if err != nil {
		return Result{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		buf[0] = byte(i) // a changed page each time, not a no-op rewrite
		if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
			return Result{}, err
		}
		began := time.Now()
		if err := f.Sync(); err != nil {
			return Result{}, err
		}
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	return Result{Syncs: n, Median: lat[n/2], Max: lat[n-1]}, nil
}
