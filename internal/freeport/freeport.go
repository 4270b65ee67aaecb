// Package freeport picks 127.0.0.1 ports for servers that bind later, or
// bind again after a restart: test clusters and the fault harness.
//
// A port from ":0" lies in the kernel's ephemeral range, which the kernel
// also hands to outgoing connections. A node killed and restarted by the
// fault harness, or started a moment after its port was picked, then finds
// the port taken by some other process's connection ("address already in
// use"); a fresh-clone CI run once failed that way while the chaos and load
// tests ran beside the node tests. So ports are drawn below the ephemeral
// range, where only listeners that ask for a port by number go.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

// minPort is the lowest port drawn: well above those system services use.
const minPort = 12000

var used = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// Listen listens on a free 127.0.0.1 port below the ephemeral range that
// this process has not handed out before. Holding the listener keeps other
// processes' picks off the port until the caller closes it to bind it for
// real.
func Listen() (net.Listener, error) {
	hi := ephemeralFrom()
	used.Lock()
	defer used.Unlock()
	for range 1000 {
		port := minPort + rand.IntN(hi-minPort)
		if used.m[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		used.m[port] = true
		return l, nil
	}
	return nil, errors.New("freeport: no free port below the ephemeral range")
}

// Addr is Listen for a caller that binds at once: the port is released.
func Addr() (string, error) {
	l, err := Listen()
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// ephemeralFrom is the first port of the kernel's ephemeral range, or
// Linux's default when it cannot be read or leaves too little room below.
func ephemeralFrom() int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if _, err := fmt.Sscan(string(b), &lo); err != nil || lo <= minPort+1000 {
			lo = 32768
		}
	}
	return lo
}
