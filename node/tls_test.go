package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/ledger"
)

// TestMutualTLS: a cluster whose nodes have certificates from one CA elects
// leaders (Raft over TLS), confirms its peers (gRPC between nodes over TLS),
// and serves a client with a certificate from that CA: DefineAsset fans out
// to every shard's leader, and writes commit and read back. A client without
// TLS, without a certificate, or with one from another CA is refused.
func TestMutualTLS(t *testing.T) {
	gen, err := tlsfiles.Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	other, err := tlsfiles.Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	serverTLS, err := gen.Node.Server()
	require.NoError(t, err)
	peerTLS, err := gen.Node.Client()
	require.NoError(t, err)
	c := newTestCluster(t, 3, 3, func(cfg *Config) {
		cfg.ServerTLS, cfg.PeerTLS = serverTLS, peerTLS
		cfg.MetricsAddr, cfg.MetricsTLS = freeAddr(t), serverTLS
	})
	expiry := metricValues(t, c.nodes[0], "tally_tls_certificate_expiry_timestamp_seconds")[""]
	assert.InDelta(t, float64(time.Now().Add(time.Hour).Unix()), expiry, 60, "the node certificate's expiry")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	userTLS, err := client.LoadTLS(gen.User.Cert, gen.User.Key, gen.User.CA)
	require.NoError(t, err)
	addrs := []string{c.cfgs[0].GRPCAddr, c.cfgs[1].GRPCAddr, c.cfgs[2].GRPCAddr}
	cl, err := client.Dial(ctx, client.Config{Addrs: addrs, TLS: userTLS})
	require.NoError(t, err)
	defer cl.Close()
	r, err := cl.DefineAsset(ctx, "shop", "POINTS", 0, "define-points")
	require.NoError(t, err, "%+v", r)
	members := []string{"ann", "bob", "cy", "dee", "eve", "fay"}
	for _, m := range members {
		_, err := cl.OpenAccount(ctx, "shop", m, "POINTS", nil, "open-"+m)
		require.NoError(t, err)
		_, err = cl.Credit(ctx, "shop", m, "POINTS", decimal.NewFromInt(25), "credit-"+m, "")
		require.NoError(t, err)
	}
	for _, m := range members {
		a, err := cl.GetAccount(ctx, "shop", m, "POINTS")
		require.NoError(t, err)
		assert.True(t, a.Posted.Equal(decimal.NewFromInt(25)), "%s: %v", m, a.Posted)
	}

	// Refused: the handshake fails, so no call gets through.
	noCert := userTLS.Clone()
	noCert.GetClientCertificate = nil
	otherTLS, err := other.User.Client()
	require.NoError(t, err)
	for name, cfg := range map[string]*tls.Config{"plaintext": nil, "no certificate": noCert, "another CA": otherTLS} {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		bad, err := client.Dial(dctx, client.Config{Addrs: addrs[:1], TLS: cfg, DialTimeout: time.Second})
		if err == nil {
			_, err = bad.GetAccount(dctx, "shop", "ann", "POINTS")
			_ = bad.Close()
		}
		dcancel()
		assert.Error(t, err, name)
	}
	_, err = c.client(addrs[0]).GetAccount(ctx, &tallypb.GetAccountRequest{Program: "shop", Member: "ann", Asset: "POINTS"})
	assert.Error(t, err, "plaintext stub")

	// The DefineAsset fan-out's mark counts only from a node's certificate:
	// a client's, signed by the same CA, names no node's host.
	fanout := func(cfg *tls.Config) error {
		cc, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		require.NoError(t, err)
		defer cc.Close()
		shard := uint32(0)
		_, err = tallypb.NewLedgerClient(cc).Submit(metadata.AppendToOutgoingContext(ctx, defineFanoutMD, "1"),
			&tallypb.SubmitRequest{Shard: &shard, Ops: []*tallypb.Op{{Kind: tallypb.OpKind_DEFINE_ASSET,
				Program: "shop", Asset: "GEMS", IdempotencyKey: "define-gems"}}})
		return err
	}
	err = fanout(userTLS)
	assert.Equal(t, ledger.CodeInvalidArgument, reasonOf(err), "a client's certificate passed for a node's: %v", err)
	err = fanout(peerTLS)
	assert.NotEqual(t, ledger.CodeInvalidArgument, reasonOf(err), "a node's certificate: %v", err)

	// Backups and restores take a node's certificate: an order service's
	// client certificate cannot copy every account or roll a shard back.
	statusOf := func(err error) codes.Code {
		var ce *client.Error
		if errors.As(err, &ce) {
			return ce.GRPCCode
		}
		return codes.OK
	}
	var backup bytes.Buffer
	_, err = cl.Backup(ctx, 0, &backup)
	assert.Equal(t, codes.PermissionDenied, statusOf(err), "a client's certificate took a backup: %v", err)
	assert.Equal(t, ledger.CodePermissionDenied, client.CodeOf(err))
	nodeCl, err := client.Dial(ctx, client.Config{Addrs: addrs, TLS: peerTLS})
	require.NoError(t, err)
	defer nodeCl.Close()
	hdr, err := nodeCl.Backup(ctx, 0, &backup)
	require.NoError(t, err, "a node's certificate")
	_, err = cl.Restore(ctx, hdr, bytes.NewReader(backup.Bytes()))
	assert.Equal(t, codes.PermissionDenied, statusOf(err), "a client's certificate restored a shard: %v", err)
	_, err = nodeCl.Restore(ctx, hdr, bytes.NewReader(backup.Bytes()))
	require.NoError(t, err, "a node's certificate")

	// Metrics over HTTPS: a scraper needs a certificate from the CA.
	scrape := func(scheme string, cfg *tls.Config) (int, error) {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := hc.Get(scheme + "://" + c.cfgs[0].MetricsAddr + "/metrics")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		return resp.StatusCode, nil
	}
	code, err := scrape("https", userTLS)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)
	_, err = scrape("https", noCert)
	assert.Error(t, err, "a scraper without a certificate")
	code, err = scrape("http", nil)
	assert.True(t, err != nil || code != http.StatusOK, "plain HTTP: %d", code)
}

// TestVerifyPeerCert: a node's certificate is one for server use that names
// the host of a --peers address, by IP (v4 or v6) or DNS name; a client-only
// certificate is refused even when a wildcard of its matches a node's host
// (found by review).
func TestVerifyPeerCert(t *testing.T) {
	n := &Node{cfg: Config{Peers: []Peer{
		{ID: "n1", RaftAddr: "node-a.example.com:7201", GRPCAddr: "node-a.example.com:7101"},
		{ID: "n2", RaftAddr: "[::1]:7202", GRPCAddr: "[::1]:7102"},
	}}}
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	for _, tc := range []struct {
		name string
		cert x509.Certificate
		ok   bool
	}{
		{"node by DNS name", x509.Certificate{DNSNames: []string{"NODE-A.example.com"}, ExtKeyUsage: server}, true},
		{"node by IPv6", x509.Certificate{IPAddresses: []net.IP{net.ParseIP("::1")}, ExtKeyUsage: server}, true},
		{"no extended key usage", x509.Certificate{DNSNames: []string{"node-a.example.com"}}, true},
		{"another host", x509.Certificate{DNSNames: []string{"node-z.example.com"}, ExtKeyUsage: server}, false},
		{"client-only wildcard", x509.Certificate{DNSNames: []string{"*.example.com"}, ExtKeyUsage: client}, false},
		{"client-only, no names", x509.Certificate{ExtKeyUsage: client}, false},
	} {
		err := n.verifyPeerCert(&tc.cert)
		assert.Equal(t, tc.ok, err == nil, "%s: %v", tc.name, err)
	}
}
