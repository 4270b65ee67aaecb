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
	require.ErrorContains(t, run([]string{"--max-version", "-1"}), "max-version")
	require.ErrorContains(t, run([]string{"--max-version", "4294967296"}), "max-version")
	require.ErrorContains(t, run([]string{"--tls-cert", "node.pem"}), "go together")
	require.ErrorContains(t, run([]string{"--metrics-tls"}), "needs --metrics")
	require.ErrorContains(t, run([]string{"--metrics-tls", "--metrics", "127.0.0.1:0"}), "needs --tls-cert")
	require.ErrorContains(t, run([]string{"--tls-cert", "x.pem", "--tls-key", "x-key.pem", "--tls-ca", "ca.pem"}), "x.pem")
}

func TestListenWarnings(t *testing.T) {
	peers := []node.Peer{
		{ID: "n1", RaftAddr: "10.0.0.1:7201", GRPCAddr: "10.0.0.1:7101"},
		{ID: "n2", RaftAddr: "10.0.0.2:7201", GRPCAddr: "10.0.0.2:7101"},
	}
	// Defaults (empty), the same address, or a wildcard on the same port: fine.
	require.Empty(t, listenWarnings(node.Config{ID: "n2", Peers: peers}))
	require.Empty(t, listenWarnings(node.Config{ID: "n2", Peers: peers, GRPCAddr: "0.0.0.0:7101", RaftAddr: "10.0.0.2:7201"}))
	require.Empty(t, listenWarnings(node.Config{ID: "n2", Peers: peers, GRPCAddr: ":7101", RaftAddr: "[::]:7201"}))
	// Another port than --peers gives: warned, per flag.
	w := listenWarnings(node.Config{ID: "n2", Peers: peers, GRPCAddr: "0.0.0.0:7102", RaftAddr: "10.0.0.2:7202"})
	require.Len(t, w, 2)
	require.Contains(t, w[0], "--grpc 0.0.0.0:7102 listens on port 7102, but --peers gives 10.0.0.2:7101 for n2")
	require.Contains(t, w[1], "--raft 10.0.0.2:7202 listens on port 7202")
	// Loopback while the others dial the real address: warned.
	w = listenWarnings(node.Config{ID: "n2", Peers: peers, GRPCAddr: "127.0.0.1:7101"})
	require.Len(t, w, 1)
	require.Contains(t, w[0], "--grpc 127.0.0.1:7101 listens on IP 127.0.0.1, but --peers gives 10.0.0.2:7101")
	// Host names are not resolved, so not compared.
	named := []node.Peer{{ID: "n1", RaftAddr: "db1.example:7201", GRPCAddr: "db1.example:7101"}}
	require.Empty(t, listenWarnings(node.Config{ID: "n1", Peers: named, GRPCAddr: "127.0.0.1:7101", RaftAddr: "10.1.1.1:7201"}))
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
