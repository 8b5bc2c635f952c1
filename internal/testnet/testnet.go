// Package testnet gives tests stand-ins for the servers a command contacts.
package testnet

import (
	"net"
	"sync/atomic"
	"testing"
)

// CountingListener accepts TCP connections on a free loopback port, counts them and closes them
// at once. It stands in for Temporal or IoT Hub where a test must show a command did not contact
// them: a command refused for its input must leave the count at zero.
func CountingListener(t testing.TB) (addr string, accepted func() int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String(), n.Load
}

// ClosedAddr returns a loopback address nobody listens on: a port that was free a moment ago. It
// stands in for a server that is down.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
