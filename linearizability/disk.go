package linearizability

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// SyncProbe is how long the disk under the nodes' data took to make a small
// write durable. Every Raft append waits for one such sync on the leader and
// then one on a follower, so a run's throughput falls with it: with a 50 ms
// sleep added to every Raft-log sync, a CI-profile run here recorded 5,014
// operations in 127 s instead of 20,000-40,000 in 70 s.
type SyncProbe struct {
	Syncs  int           `json:"syncs"`
	Median time.Duration `json:"median_ns"`
	Max    time.Duration `json:"max_ns"`
}

func (p SyncProbe) String() string {
	return fmt.Sprintf("median %s, max %s over %d syncs", p.Median.Round(10*time.Microsecond),
		p.Max.Round(10*time.Microsecond), p.Syncs)
}

// slowDiskSync is the median sync latency from which a disk counts as slow:
// an SSD syncs a 4 KiB write in about a millisecond, a network or throttled
// cloud volume in tens to hundreds.
const slowDiskSync = 20 * time.Millisecond

// Raft timeouts of a cluster on a slow disk. Every vote is synced before it
// is granted, so with the defaults (500 ms) elections time out before they
// finish: with this machine's disk throttled to 20 write IOPS (blkio
// cgroup; probes of 200-300 ms), a fresh cluster made 192 candidacies and
// had no leader of shard 0 after 3 minutes; with these it had both shards'
// leaders within 20 s (5 candidacies). The faults (1.5-4 s) still outlast
// the heartbeat timeout, so they still cause elections.
const (
	slowDiskHeartbeatTimeout = time.Second
	slowDiskElectionTimeout  = 2 * time.Second
	slowDiskLeaseTimeout     = time.Second
)

// syncProbeWrites is how many synced 4 KiB writes a probe makes: enough
// for a median, few enough to take well under a second on a normal disk.
const syncProbeWrites = 20

// ProbeSync writes 4 KiB n times to a scratch file in dir, syncing after
// each write as a WAL does, and reports the sync latencies. The file is
// removed afterwards.
func ProbeSync(dir string, n int) (SyncProbe, error) {
	if n <= 0 {
		return SyncProbe{}, fmt.Errorf("probe: %d syncs", n)
	}
	f, err := os.CreateTemp(dir, "sync-probe-")
	if err != nil {
		return SyncProbe{}, err
	}
	defer os.Remove(filepath.Clean(f.Name()))
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		buf[0] = byte(i) // a changed page each time, not a no-op rewrite
		if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
			return SyncProbe{}, err
		}
		began := time.Now()
		if err := f.Sync(); err != nil {
			return SyncProbe{}, err
		}
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	return SyncProbe{Syncs: n, Median: lat[n/2], Max: lat[n-1]}, nil
}
