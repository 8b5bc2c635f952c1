package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

// Device i dials broker i mod k; with no brokers, the hub's own.
func TestBrokersRoundRobin(t *testing.T) {
	svc := hubconn.Service{HostName: "localhost"}
	brokers := []string{"tls://127.0.0.1:8883", "tls://127.0.0.2:8883", "tls://127.0.0.3:8883"}
	f, err := New(Config{Count: 7, Service: svc, Brokers: brokers})
	require.NoError(t, err)
	for i, m := range f.Members() {
		assert.Equal(t, brokers[i%3], f.deviceConfig(i, m, hubconn.Device{}).Broker, m.ID)
	}

	f, err = New(Config{Count: 2, Service: svc})
	require.NoError(t, err)
	assert.Empty(t, f.deviceConfig(1, f.Members()[1], hubconn.Device{}).Broker, "the hub's own broker")

	_, err = New(Config{Count: 2, Service: svc, Brokers: []string{"tls://127.0.0.1:8883", " "}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "broker 2 of 2 is empty")
}

// A fleet spread over 127.0.0.1 and 127.0.0.2 connects every device to one
// localhub listening on 0.0.0.0, each on its round-robin address, and
// verifies the hub's certificate by host name: it names neither
// 127.0.0.2 nor any other address but 127.0.0.1.
func TestFleetSpreadOverAddresses(t *testing.T) {
	t.Parallel()
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		// Linux (CI, and every host the fleet's spread is for) routes all of
		// 127.0.0.0/8 to lo: there a failure here is a failure.
		if runtime.GOOS == "linux" {
			t.Fatalf("127.0.0.2 does not bind on Linux: %v", err)
		}
		t.Skipf("127.0.0.2 is not a loopback address on %s (%v): macOS routes only 127.0.0.1", runtime.GOOS, err)
	} else {
		_ = ln.Close()
	}
	hubLogs, hubLogger := testlog.New(t, slog.LevelInfo)
	h, err := hub.New(hub.Options{StateDir: t.TempDir(), MQTTAddr: "0.0.0.0:0", HTTPSAddr: "127.0.0.1:0", Unlimited: true, Logger: hubLogger})
	require.NoError(t, err)
	require.NoError(t, h.Start(context.Background()))
	t.Cleanup(func() { _ = h.Close() })
	host, port, err := net.SplitHostPort(h.MQTTAddr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host, "a hub on 0.0.0.0 is dialled on loopback")
	service, err := hubconn.ParseService("localhub", h.ServiceConnectionString())
	require.NoError(t, err)

	// Dialled by address alone, the certificate does not verify: the
	// devices below pass only because they check it against HostName.
	tlsCfg, err := hubconn.TLSConfig(h.CACertFile())
	require.NoError(t, err)
	_, err = tls.Dial("tcp", net.JoinHostPort("127.0.0.2", port), tlsCfg)
	var hostErr x509.HostnameError
	require.True(t, errors.As(err, &hostErr), "dialling 127.0.0.2 without a server name: %v", err)

	addrs := []string{net.JoinHostPort("127.0.0.1", port), net.JoinHostPort("127.0.0.2", port)}
	brokers, err := LoopbackBrokers(h.MQTTAddr(), 6, 3)
	require.NoError(t, err)
	require.Equal(t, []string{"tls://" + addrs[0], "tls://" + addrs[1]}, brokers)
	logs, logger := testlog.New(t, slog.LevelInfo)
	f, err := New(Config{
		Count: 6, Prefix: "sp-", Service: service, CAFile: h.CACertFile(),
		Brokers:       brokers,
		StageDuration: 200 * time.Millisecond, Logger: logger,
	})
	require.NoError(t, err)
	stop := runUntilReady(t, f, 60*time.Second)
	t.Cleanup(stop)

	st := f.Stats()
	assert.Equal(t, 6, st.Connected)
	assert.Zero(t, st.ConnectFailed)
	assert.Equal(t, 6, h.Stats().ConnectedDevices)
	// The hub logs the address each device reached.
	reached := map[string]string{}
	for _, m := range regexp.MustCompile(`msg="device connected" device=(\S+) remote=\S+ local=(\S+)`).FindAllStringSubmatch(hubLogs.String(), -1) {
		reached[m[1]] = m[2]
	}
	for i, m := range f.Members() {
		assert.Equal(t, addrs[i%2], reached[m.ID], m.ID)
	}
	for _, a := range addrs {
		assert.Contains(t, logs.String(), `msg="fleet broker" broker=tls://`+a+" devices=3")
	}
}

func TestLoopbackBrokers(t *testing.T) {
	for _, tc := range []struct {
		name              string
		addr              string
		count, perAddress int
		want              []string
		wantErr           string
	}{
		{name: "one address", addr: "127.0.0.1:8883", count: 20000, perAddress: 20000, want: []string{"tls://127.0.0.1:8883"}},
		{name: "one more device", addr: "127.0.0.1:8883", count: 20001, perAddress: 20000, want: []string{"tls://127.0.0.1:8883", "tls://127.0.0.2:8883"}},
		{name: "100,000", addr: "127.0.0.1:41234", count: 100_000, perAddress: 20000, want: []string{
			"tls://127.0.0.1:41234", "tls://127.0.0.2:41234", "tls://127.0.0.3:41234", "tls://127.0.0.4:41234", "tls://127.0.0.5:41234"}},
		{name: "the port of a wildcard", addr: "0.0.0.0:8883", count: 3, perAddress: 2, want: []string{"tls://127.0.0.1:8883", "tls://127.0.0.2:8883"}},
		{name: "the last address", addr: "127.0.0.1:1", count: 254, perAddress: 1},
		{name: "too many addresses", addr: "127.0.0.1:1", count: 1_000_000, perAddress: 1000, wantErr: "need 1000 addresses, more than the 254 of 127.0.0.1 to 127.0.0.254: put 3938 or more on each"},
		{name: "no port", addr: "127.0.0.1", count: 1, perAddress: 1, wantErr: "not host:port"},
		{name: "no devices an address", addr: "127.0.0.1:1", count: 1, perAddress: 0, wantErr: "1 or more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoopbackBrokers(tc.addr, tc.count, tc.perAddress)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			if tc.want != nil {
				assert.Equal(t, tc.want, got)
			}
			assert.Equal(t, (tc.count+tc.perAddress-1)/tc.perAddress, len(got))
			assert.Equal(t, "tls://127.0.0."+strconv.Itoa(len(got))+":"+tc.addr[strings.LastIndex(tc.addr, ":")+1:], got[len(got)-1])
		})
	}
}
