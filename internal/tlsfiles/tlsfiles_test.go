package tlsfiles

import (
	"crypto/tls"
	"flag"
	"net"
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
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte("ok"))
			}()
		}
	}()
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
	assert.NoError(t, f.Check())
	assert.Error(t, Files{Cert: "a"}.Check())
	none, err := Files{}.Server()
	assert.NoError(t, err)
	assert.Nil(t, none)
}
