package linearizability

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoServer echoes every line back on 127.0.0.1.
func echoServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// roundTrip sends a line through c and waits up to wait for the echo.
func roundTrip(c net.Conn, r *bufio.Reader, wait time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(wait))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	_, err := r.ReadString('\n')
	return time.Since(start), err
}

func TestProxyModes(t *testing.T) {
	p, err := NewProxy("a->b", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)

	if _, err := roundTrip(c, r, 2*time.Second); err != nil {
		t.Fatalf("pass: %v", err)
	}
	// The counters the nemesis checks a fault's effect with. The echo's
	// bytes are counted after the proxy wrote them, so they may reach us
	// before the count does: wait for it a moment.
	for deadline := time.Now().Add(time.Second); p.Forwarded() < 10 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	hindered := p.Hindered()
	if p.Forwarded() < 10 || hindered != 0 {
		t.Fatalf("pass: forwarded %d bytes, hindered %d times; want both ways' pings, nothing hindered", p.Forwarded(), hindered)
	}
	moved := func(what string) {
		t.Helper()
		if p.Hindered() <= hindered {
			t.Fatalf("%s: the traffic it hindered was not counted", what)
		}
		hindered = p.Hindered()
	}

	p.Set(LinkPass, 150*time.Millisecond)
	// Each direction is delayed: at least twice the delay per round trip.
	if d, err := roundTrip(c, r, 3*time.Second); err != nil || d < 300*time.Millisecond {
		t.Fatalf("delay: round trip %s, %v; want >= 300ms", d, err)
	}
	moved("delay")

	// Blackhole: silence, and the stream resumes intact when it heals.
	p.Set(LinkBlackhole, 0)
	if _, err := roundTrip(c, r, 300*time.Millisecond); err == nil {
		t.Fatal("blackhole: got an echo")
	}
	moved("blackhole")
	p.Set(LinkPass, 0)
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("after blackhole: the held-back echo is %q, %v", line, err)
	}

	// Drop: the connection is closed, new ones are refused.
	p.Set(LinkDrop, 0)
	if _, err := roundTrip(c, r, time.Second); err == nil {
		t.Fatal("drop: the connection still works")
	}
	moved("drop")
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		_ = c2.SetDeadline(time.Now().Add(time.Second))
		_, _ = c2.Write([]byte("ping\n"))
		if _, err := bufio.NewReader(c2).ReadString('\n'); err == nil {
			t.Fatal("drop: a new connection got an echo")
		}
		c2.Close()
	}

	p.Set(LinkPass, 0)
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if _, err := roundTrip(c3, bufio.NewReader(c3), 2*time.Second); err != nil {
		t.Fatalf("healed: %v", err)
	}
}
