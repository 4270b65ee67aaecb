package tlsfiles

import (
	"crypto/tls"
	"flag"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGeneratedFilesHandshake: the generated node certificate serves and
// dials, the client certificate dials, and each side verifies the other
// against the CA; a second flag set keeps what the first parsed.
func TestGeneratedFilesHandshake(t *testing.T) {
	g, err := Generate(t.TempDir(), []string{"127.0.0.1", "localhost"}, time.Hour)
	require.NoError(t, err)
	server, err := g.Node.Server()
	require.NoError(t, err)
	ln := serveTLS(t, server, func(c net.Conn) { _, _ = c.Write([]byte("ok")) })
	for _, f := range []Files{g.Node, g.User} {
		cfg, err := f.Client()
		require.NoError(t, err)
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		require.NoError(t, err, f.Cert)
		b := make([]byte, 2)
		_, err = c.Read(b)
		require.NoError(t, err, f.Cert)
		assert.Equal(t, "ok", string(b))
		_ = c.Close()
	}
	// The client certificate is for client use only: it cannot serve.
	userServer, err := g.User.Server()
	require.NoError(t, err)
	uln, err := tls.Listen("tcp", "127.0.0.1:0", userServer)
	require.NoError(t, err)
	defer uln.Close()
	go func() {
		if c, err := uln.Accept(); err == nil {
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	cfg, err := g.Node.Client()
	require.NoError(t, err)
	_, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", uln.Addr().String(), cfg)
	require.Error(t, err)

	var f Files
	top, sub := flag.NewFlagSet("top", flag.ContinueOnError), flag.NewFlagSet("sub", flag.ContinueOnError)
	f.AddFlags(top)
	require.NoError(t, top.Parse([]string{"--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c"}))
	f.AddFlags(sub)
	require.NoError(t, sub.Parse(nil))
	assert.Equal(t, Files{Cert: "a", Key: "b", CA: "c"}, f)
	t.Setenv(EnvCert, "env.pem")
	t.Setenv(EnvCA, "env-ca.pem")
	var fromEnv Files
	envFlags := flag.NewFlagSet("env", flag.ContinueOnError)
	fromEnv.FromEnv()
	fromEnv.AddFlags(envFlags)
	require.NoError(t, envFlags.Parse([]string{"--tls-ca", "flag-ca.pem"}))
	assert.Equal(t, Files{Cert: "env.pem", CA: "flag-ca.pem"}, fromEnv, "the environment fills what no flag gives")
	assert.NoError(t, f.Check())
	assert.Error(t, Files{Cert: "a"}.Check())
	none, err := Files{}.Server()
	assert.NoError(t, err)
	assert.Nil(t, none)
}

// serveTLS accepts TLS connections on 127.0.0.1 with cfg until the test
// ends, handing each to handle and closing it after.
func serveTLS(t *testing.T, cfg *tls.Config, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}

// TestRotatedCertificateIsPresented: certificates replaced in place are
// presented from the next handshake on, by a server and by a client, without
// a new tls.Config; a pair that does not load leaves the last good one.
func TestRotatedCertificateIsPresented(t *testing.T) {
	dir := t.TempDir()
	g, err := Generate(dir, []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	server, err := g.Node.Server()
	require.NoError(t, err)
	clientSerials := make(chan string, 8)
	server.VerifyConnection = func(cs tls.ConnectionState) error {
		clientSerials <- cs.PeerCertificates[0].SerialNumber.String()
		return nil
	}
	ln := serveTLS(t, server, func(c net.Conn) { _ = c.(*tls.Conn).Handshake() })
	client, err := g.User.Client()
	require.NoError(t, err)
	handshake := func() (serverSerial, clientSerial string) {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), client)
		require.NoError(t, err)
		defer c.Close()
		select {
		case clientSerial = <-clientSerials:
		case <-time.After(5 * time.Second):
			t.Fatal("the server saw no client certificate")
		}
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), clientSerial
	}
	s1, c1 := handshake()

	require.NoError(t, Issue(dir, g.Node, []string{"127.0.0.1"}, time.Hour))
	require.NoError(t, Issue(dir, g.User, nil, time.Hour))
	time.Sleep(reloadCheck + 100*time.Millisecond)
	s2, c2 := handshake()
	assert.NotEqual(t, s1, s2, "the server presents the rotated certificate")
	assert.NotEqual(t, c1, c2, "the client presents the rotated certificate")

	require.NoError(t, os.WriteFile(g.Node.Cert, []byte("not a certificate"), 0o644))
	time.Sleep(reloadCheck + 100*time.Millisecond)
	s3, _ := handshake()
	assert.Equal(t, s2, s3, "a pair that does not load leaves the last good one")
}

// TestGenerateKeepsKeysPrivateAndOldFiles: keys are 0600 even where a
// looser file was (os.WriteFile kept an existing file's mode; found by
// review), and Generate refuses a directory that holds its files already
// rather than orphan the certificates of the CA it would replace.
func TestGenerateKeepsKeysPrivateAndOldFiles(t *testing.T) {
	g, err := Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	dir := filepath.Dir(g.CA)
	for _, f := range []string{"ca-key.pem", "node-key.pem", "client-key.pem"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	_, err = Generate(dir, []string{"127.0.0.1"}, time.Hour)
	require.ErrorContains(t, err, "exists")

	// A rotation over a world-readable key file leaves it private.
	require.NoError(t, os.Chmod(g.Node.Key, 0o644))
	require.NoError(t, Issue(dir, g.Node, []string{"127.0.0.1"}, time.Hour))
	st, err := os.Stat(g.Node.Key)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	left, err := filepath.Glob(filepath.Join(dir, ".*"))
	require.NoError(t, err)
	assert.Empty(t, left, "no temporary file left")
}

// TestHalfWrittenFileIsNotServed: a certificate file caught half rewritten
// in place (its last block cut) loaded as what came before the cut, and was
// served; it now counts as a failed load, and the last good pair stays
// (found by review).
func TestHalfWrittenFileIsNotServed(t *testing.T) {
	g, err := Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	certPEM, err := os.ReadFile(g.Node.Cert)
	require.NoError(t, err)
	caPEM, err := os.ReadFile(g.CA)
	require.NoError(t, err)
	// A chain file: the leaf, then the CA as if it were an intermediate.
	require.NoError(t, os.WriteFile(g.Node.Cert, append(append([]byte{}, certPEM...), caPEM...), 0o644))
	p, err := newKeyPair(g.Node.Cert, g.Node.Key)
	require.NoError(t, err)
	require.Len(t, p.current().Certificate, 2)
	now := time.Now()
	p.now = func() time.Time { return now }

	chain := append(append([]byte{}, certPEM...), caPEM...)
	require.NoError(t, os.WriteFile(g.Node.Cert, chain[:len(chain)-100], 0o644))
	now = now.Add(2 * reloadCheck)
	assert.Len(t, p.current().Certificate, 2, "the cut chain was served")

	require.NoError(t, os.WriteFile(g.Node.Cert, certPEM, 0o644))
	now = now.Add(2 * reloadCheck)
	assert.Len(t, p.current().Certificate, 1, "a whole file loads")
	assert.True(t, wholePEM(certPEM))
	assert.False(t, wholePEM(nil))
	assert.False(t, wholePEM([]byte("junk")))
}
