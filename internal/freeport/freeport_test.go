package freeport

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPortsAreBelowTheEphemeralRangeAndNeverRepeat(t *testing.T) {
	seen := map[string]bool{}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for range 50 {
		l, err := Listen()
		require.NoError(t, err)
		held = append(held, l)
		addr, err := Addr()
		require.NoError(t, err)
		for _, a := range []string{l.Addr().String(), addr} {
			host, p, err := net.SplitHostPort(a)
			require.NoError(t, err)
			require.Equal(t, "127.0.0.1", host)
			port, err := strconv.Atoi(p)
			require.NoError(t, err)
			require.GreaterOrEqual(t, port, minPort)
			require.Less(t, port, ephemeralFrom())
			require.False(t, seen[a], "port %s handed out twice", a)
			seen[a] = true
		}
	}
	// A released port can be bound again by its caller.
	addr, err := Addr()
	require.NoError(t, err)
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	require.NoError(t, l.Close())
}
