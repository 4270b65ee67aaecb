package node

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// snapshotBytesPerSync is how much of a snapshot may be written before it is
// synced. A snapshot is the whole shard (hundreds of MB after a busy hour);
// written in one go and synced once when the sink closes, that fsync pushes
// it all to the disk at once, and every Raft log fsync queued behind it
// waits: on the 16-CPU benchmark machine each snapshot showed up as a
// 100-400 ms stall of all requests (docs/BENCHMARKS.md). Syncing as we go
// keeps the disk queue short, as Pebble's BytesPerSync does for sstables.
const snapshotBytesPerSync = 1 << 20

// syncingSnapshots is hashicorp/raft's FileSnapshotStore with snapshots
// synced every bytesPerSync bytes while they are written. Durability is
// unchanged: the store's own fsync at Close still decides whether a snapshot
// exists. The early syncs need the state file's path, which FileSnapshotStore
// does not export; it is <base>/snapshots/<id>.tmp/state.bin, and if that
// layout ever changes the syncs are skipped (only pacing is lost).
type syncingSnapshots struct {
	*raft.FileSnapshotStore
	base         string
	bytesPerSync int
	// boundReads, if set, bounds the shard's incoming Raft reads while a
	// sink is open (see snapshotReadBound); it returns the release.
	boundReads func() (release func())
}

// snapshotReadBound is how long a follower installing a snapshot waits for
// the next bytes of the stream. hashicorp/raft reads the stream inside its
// main loop with no deadline, so a leader that stalls mid-stream (a paused
// VM) would keep the follower's shard from voting, and with the stalled
// leader that can leave the shard with no leader, for as long as the stall
// lasts. raft's Create is the one hook before the stream is read, and it
// serves a node's own snapshots too: while any sink is open, every read of
// a connection peers opened to the shard is bounded (transport
// Mux.BoundReads). A healthy stream moves every few milliseconds, and an
// idle connection closed meanwhile is dialed again, so the bound is long.
const snapshotReadBound = 30 * time.Second

// removeCrashedSinks removes the directories of snapshot sinks a crash left
// open in the FileSnapshotStore at base (<base>/snapshots/<id>.tmp, the
// layout syncingSink's path also relies on) and returns their paths. Such a
// directory holds whatever was written before the crash, up to a whole
// shard, and nothing else ever removes it: the store's List skips it and
// its Reap ignores it. Call it only before the store is opened, when no
// sink can be open. A directory that cannot be removed is left and
// reported; the others are removed anyway.
func removeCrashedSinks(base string) (removed []string, err error) {
	dir := filepath.Join(base, "snapshots")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // a new shard: no store yet
	}
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, path)
	}
	return removed, errors.Join(errs...)
}

func newSyncingSnapshots(store *raft.FileSnapshotStore, base string) *syncingSnapshots {
	return &syncingSnapshots{FileSnapshotStore: store, base: base, bytesPerSync: snapshotBytesPerSync}
}

// Create implements raft.SnapshotStore.
func (s *syncingSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	release := func() {}
	if s.boundReads != nil {
		release = s.boundReads()
	}
	sink, err := s.FileSnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		release()
		return nil, err
	}
	return &syncingSink{
		SnapshotSink: sink,
		path:         filepath.Join(s.base, "snapshots", sink.ID()+".tmp", "state.bin"),
		every:        s.bytesPerSync,
		release:      release,
	}, nil
}

// Open implements raft.SnapshotStore. The stream says its snapshot's Raft
// index (fsm.SnapshotIndexer), which FSM.Restore is not told otherwise.
func (s *syncingSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.FileSnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	return meta, indexedStream{ReadCloser: rc, index: meta.Index}, nil
}

type indexedStream struct {
	io.ReadCloser
	index uint64
}

func (s indexedStream) SnapshotIndex() uint64 { return s.index }

// syncingSink forwards writes to the store's sink and syncs the state file
// behind it every `every` bytes.
type syncingSink struct {
	raft.SnapshotSink
	path     string
	every    int
	unsynced int
	f        *os.File // the state file, opened for syncing at the first sync
	off      bool     // the file could not be opened or synced: stop trying
	syncs    int      // syncs done (for tests)
	release  func()   // lifts the read bound taken for this sink (idempotent)
}

func (s *syncingSink) Write(p []byte) (int, error) {
	n, err := s.SnapshotSink.Write(p)
	s.unsynced += n
	if err == nil && s.unsynced >= s.every {
		s.unsynced = 0
		s.sync()
	}
	return n, err
}

// sync flushes what the sink has written so far. The sink buffers at most a
// few KiB, so nearly all of it is in the file already. Errors only turn the
// pacing off: Close syncs again and reports what matters.
func (s *syncingSink) sync() {
	if s.off {
		return
	}
	if s.f == nil {
		f, err := os.Open(s.path)
		if err != nil {
			s.off = true
			return
		}
		s.f = f
	}
	if err := s.f.Sync(); err != nil {
		s.off = true
		return
	}
	s.syncs++
}

func (s *syncingSink) closeFile() {
	s.release()
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
}

// Close implements raft.SnapshotSink.
func (s *syncingSink) Close() error {
	s.closeFile()
	return s.SnapshotSink.Close()
}

// Cancel implements raft.SnapshotSink.
func (s *syncingSink) Cancel() error {
	s.closeFile()
	return s.SnapshotSink.Cancel()
}
