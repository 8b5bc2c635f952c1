package testnet

import (
	"net"
	"testing"
	"time"
)

func TestCountingListener(t *testing.T) {
	addr, accepted := CountingListener(t)
	if got := accepted(); got != 0 {
		t.Fatalf("accepted %d before any dial", got)
	}
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for accepted() != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := accepted(); got != 2 {
		t.Fatalf("accepted %d, want 2", got)
	}
}
