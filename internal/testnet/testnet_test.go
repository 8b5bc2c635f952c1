package testnet

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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
	assert.Eventually(t, func() bool { return accepted() == 2 }, 5*time.Second, 10*time.Millisecond)
	if got := accepted(); got != 2 {
		t.Fatalf("accepted %d, want 2", got)
	}
}
