// Package freeport picks 127.0.0.1 ports for servers that bind later, or
// bind again after a restart: test clusters and the fault harness.
//
// A port from ":0" lies in the kernel's ephemeral range, which the kernel
// also hands to outgoing connections. A node killed and restarted by the
// fault harness, or started a moment after its port was picked, then finds
// the port taken by some other process's connection ("address already in
// use"); a fresh-clone CI run once failed that way while the chaos and load
// tests ran beside the node tests. So ports are drawn outside the ephemeral
// range, where only listeners that ask for a port by number go.
//
// Several test processes draw from that range at once (go test runs
// packages in parallel), and a port may sit unbound for a while (a node
// being restarted). So each port handed out is also claimed with an
// advisory lock on a file under the temporary directory, held until the
// process exits: no other process using this package gets it meanwhile.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// minPort is the lowest port drawn: well above those system services use.
const minPort = 12000

// minSpan is the fewest ports a stretch outside the ephemeral range must
// hold to be drawn from.
const minSpan = 1000

var claimed = struct {
	sync.Mutex
	ports map[int]bool // handed out by this process
	locks []*os.File   // held open: closing a file drops its lock
}{ports: map[int]bool{}}

// Listen listens on a free 127.0.0.1 port outside the ephemeral range that
// no process using this package holds. Holding the listener also keeps
// processes that do not use it off the port until the caller closes it to
// bind it for real.
func Listen() (net.Listener, error) {
	lo, hi := drawRange()
	claimed.Lock()
	defer claimed.Unlock()
	for range 1000 {
		port := lo + rand.IntN(hi-lo)
		if claimed.ports[port] {
			continue
		}
		lock, ok := claim(port)
		if !ok {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			if lock != nil {
				_ = lock.Close()
			}
			continue
		}
		claimed.ports[port] = true
		if lock != nil {
			claimed.locks = append(claimed.locks, lock)
		}
		return l, nil
	}
	return nil, errors.New("freeport: no free port outside the ephemeral range")
}

// Addr is Listen for a caller that binds at once: the port is released (but
// stays claimed).
func Addr() (string, error) {
	l, err := Listen()
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// claim takes the port's lock file without waiting; false if another
// process holds it. Where no lock file can be made (a temporary directory
// another user owns, say), the port is used unclaimed (nil, true): that
// only brings back the small chance of a clash between processes. The
// files stay behind (empty, one per port at most): removing one while
// another process opens it would let two processes lock two different
// files for the same port.
func claim(port int) (*os.File, bool) {
	dir := filepath.Join(os.TempDir(), "tally-freeport")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, true
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, !errors.Is(err, syscall.EWOULDBLOCK)
	}
	return f, true
}

// drawRange is the stretch [lo, hi) ports are drawn from: below the
// kernel's ephemeral range, or above it when there is too little room
// below, or Linux's default range's complement when it cannot be read.
func drawRange() (lo, hi int) {
	eLo, eHi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a <= z {
			eLo, eHi = a, z
		}
	}
	return outside(eLo, eHi)
}

// outside picks the stretch outside an ephemeral range [eLo, eHi].
func outside(eLo, eHi int) (lo, hi int) {
	switch {
	case eLo-minPort >= minSpan:
		return minPort, eLo
	case 65536-(eHi+1) >= minSpan:
		return max(eHi+1, minPort), 65536
	default:
		// No room outside the range: draw beside it anyway; only a
		// collision with an outgoing connection is then possible.
		return minPort, 65536
	}
}
