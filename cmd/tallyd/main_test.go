package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/diskprobe"
	"github.com/tally-ledger/tally/node"
)

func TestParsePeers(t *testing.T) {
	got, err := parsePeers("n1=127.0.0.1:7201/127.0.0.1:7101,n2=127.0.0.1:7202/127.0.0.1:7102")
	require.NoError(t, err)
	require.Equal(t, []node.Peer{
		{ID: "n1", RaftAddr: "127.0.0.1:7201", GRPCAddr: "127.0.0.1:7101"},
		{ID: "n2", RaftAddr: "127.0.0.1:7202", GRPCAddr: "127.0.0.1:7102"},
	}, got)
	for _, bad := range []string{"", "n1", "n1=a", "n1=/b", "=a/b", "n1=a/"} {
		_, err := parsePeers(bad)
		require.Error(t, err, bad)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	require.ErrorContains(t, run([]string{"--id", "n9", "--data", t.TempDir(),
		"--peers", "n1=127.0.0.1:1/127.0.0.1:2"}), "not in Peers")
	require.ErrorContains(t, run([]string{"--peers", "n1=127.0.0.1:1/127.0.0.1:2", "--raft-dial-rewrite", "x"}), "advertised=dialed")
	// "--bootstrap false" sets --bootstrap and stops the parser at "false".
	require.ErrorContains(t, run([]string{"--bootstrap", "false", "--id", "n1"}), `unexpected argument "false"`)
}

func TestSlowDiskWarning(t *testing.T) {
	fast := diskprobe.Result{Syncs: 5, Median: time.Millisecond}
	slow := diskprobe.Result{Syncs: 5, Median: 150 * time.Millisecond}
	require.Empty(t, slowDiskWarning(fast, false))
	require.Empty(t, slowDiskWarning(slow, true), "the operator chose the timeouts")
	w := slowDiskWarning(slow, false)
	require.Contains(t, w, "150ms")
	require.Contains(t, w, "--election-timeout 2s")
}
