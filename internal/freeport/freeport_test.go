package freeport

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPortsAreOutsideTheEphemeralRangeAndNeverRepeat(t *testing.T) {
	// The kernel's own range, read here independently of drawRange.
	eLo, eHi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, err := fmt.Sscan(string(b), &eLo, &eHi)
		require.NoError(t, err)
	}
	roomOutside := eLo-minPort >= minSpan || 65535-eHi >= minSpan

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
			if roomOutside {
				require.True(t, port < eLo || port > eHi, "port %d is inside the ephemeral range %d-%d", port, eLo, eHi)
			}
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

func TestClaimExcludesOtherHolders(t *testing.T) {
	// flock locks belong to the open file, so a second open of the same
	// file, as another process would make, cannot take a held port.
	lo, hi := drawRange()
	port := lo + (hi-lo)/2
	f, ok := claim(port)
	if !ok {
		t.Skipf("port %d is claimed by another process", port)
	}
	if f == nil {
		t.Skipf("no lock file can be made under %s; ports are handed out unclaimed", os.TempDir())
	}
	defer f.Close()
	_, ok = claim(port)
	require.False(t, ok, "a held claim was granted again")
	require.NoError(t, f.Close())
	g, ok := claim(port)
	require.True(t, ok, "a released claim was refused")
	require.NoError(t, g.Close())
}

func TestOutside(t *testing.T) {
	for _, tc := range []struct{ eLo, eHi, lo, hi int }{
		{32768, 60999, minPort, 32768}, // Linux's default: below
		{1024, 50000, 50001, 65536},    // no room below: above
		{1024, 65535, minPort, 65536},  // no room anywhere
		{12500, 65000, minPort, 65536}, // too little on either side
	} {
		lo, hi := outside(tc.eLo, tc.eHi)
		require.Equal(t, [2]int{tc.lo, tc.hi}, [2]int{lo, hi}, "%d-%d", tc.eLo, tc.eHi)
	}
}
