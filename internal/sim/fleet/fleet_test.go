package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
	"github.com/dmflow/dmflow/internal/sim/hub"
	"github.com/dmflow/dmflow/internal/testlog"
)

// These tests run fleets against a real localhub started in-process, with
// the unchanged amenzhinsky clients on both sides.

type testHub struct {
	*hub.Hub
	service hubconn.Service
	svc     *iotservice.Client
}

func startHub(t *testing.T) *testHub {
	t.Helper()
	// Unthrottled: these tests are about the fleet; at S1 a restarted
	// fleet's per-device registry reads alone wait on the 100/min quota.
	h, err := hub.New(hub.Options{StateDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPSAddr: "127.0.0.1:0", Unlimited: true})
	require.NoError(t, err)
	require.NoError(t, h.Start(context.Background()))
	t.Cleanup(func() { _ = h.Close() })
	s, err := hubconn.ParseService("localhub", h.ServiceConnectionString())
	require.NoError(t, err)
	svc, err := hubconn.NewServiceClient(s, h.CACertFile())
	require.NoError(t, err)
	t.Cleanup(func() { _ = svc.Close() })
	return &testHub{Hub: h, service: s, svc: svc}
}

// runUntilReady runs f until it reports ready, failing t if it ends early
// or takes longer than within; stop cancels it and checks it ended cleanly.
func runUntilReady(t *testing.T, f *Fleet, within time.Duration) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	select {
	case <-f.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(within):
		cancel()
		t.Fatalf("fleet not ready within %s", within)
	}
	return func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
}

func TestRegisterIdempotent(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	ctx := context.Background()
	ids := make([]string, 2*BulkSize+17)
	for i := range ids {
		ids[i] = DeviceID("reg-", i+1, len(ids))
	}
	// One device exists before, with its own keys.
	pre, err := h.svc.CreateDevice(ctx, &iotservice.Device{DeviceID: ids[5]})
	require.NoError(t, err)

	first, err := Register(ctx, h.svc, ids, 3, nil)
	require.NoError(t, err)
	assert.True(t, first.Bulk)
	assert.Equal(t, len(ids)-1, first.Created)
	assert.Equal(t, 1, first.Existing)
	require.Len(t, first.Conns, len(ids))
	for i, c := range first.Conns {
		assert.Equal(t, ids[i], c.DeviceID)
		assert.Equal(t, "localhost", c.HostName, "devices connect to the bare host")
		cs, err := h.DeviceConnectionString(ctx, ids[i])
		require.NoError(t, err)
		assert.Equal(t, cs, c.String(), "the keys the hub holds")
	}
	assert.Contains(t, first.Conns[5].String(), pre.Authentication.SymmetricKey.PrimaryKey, "an existing device keeps its keys")

	again, err := Register(ctx, h.svc, ids, 3, nil)
	require.NoError(t, err)
	assert.Equal(t, 0, again.Created)
	assert.Equal(t, len(ids), again.Existing)
	assert.Equal(t, first.Conns, again.Conns)
}

// A fleet of 50 with every fault profile, against localhub.
func TestFleetFaultProfiles(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	logs, logger := testlog.New(t, slog.LevelInfo)
	const stage = 200 * time.Millisecond
	f, err := New(Config{
		Count:   50,
		Seed:    7,
		Faults:  Faults{Offline: 0.1, Flapping: 0.1, Slow: 0.1, Failing: 0.1, Unresponsive: 0.1, SlowFactor: 2, FlapInterval: time.Second},
		Service: h.service, CAFile: h.CACertFile(), Brokers: []string{"tls://" + h.MQTTAddr()},
		StageDuration:   stage,
		RebootDuration:  time.Second,
		SummaryInterval: 300 * time.Millisecond,
		Logger:          logger,
	})
	require.NoError(t, err)
	byProfile := map[Profile][]Member{}
	for _, m := range f.Members() {
		byProfile[m.Profile] = append(byProfile[m.Profile], m)
	}
	for _, p := range Profiles {
		want := 5
		if p == Healthy {
			want = 25
		}
		require.Len(t, byProfile[p], want, "%s", p)
	}

	stop := runUntilReady(t, f, 60*time.Second)
	t.Cleanup(stop)
	ctx := context.Background()
	st := f.Stats()
	assert.Equal(t, 50, st.Devices)
	assert.Equal(t, 45, st.Running)
	assert.Zero(t, st.ConnectFailed)

	// Offline devices are registered and never connect.
	for _, m := range byProfile[Offline] {
		assert.Nil(t, f.Device(m.ID))
		dev, err := h.svc.GetDevice(ctx, m.ID)
		require.NoError(t, err, m.ID)
		assert.Equal(t, iotservice.Disconnected, dev.ConnectionState, m.ID)
	}

	// Flapping devices drop and come back.
	for _, m := range byProfile[Flapping] {
		d := f.Device(m.ID)
		require.Eventually(t, func() bool { return d.Connections() >= 3 }, 20*time.Second, 50*time.Millisecond, m.ID+" reconnected twice")
	}

	// Every device that answers gets a firmware update at once; unresponsive
	// ones time out.
	type outcome struct {
		m   Member
		res *iotservice.MethodResult
		err error
	}
	var wg sync.WaitGroup
	results := make(chan outcome, 50)
	for _, m := range f.Members() {
		if m.Profile == Offline {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A flapping device may drop a call in flight; the caller
			// retries, which the update ID makes safe.
			attempts := 1
			if m.Profile == Flapping {
				attempts = 5
			}
			var (
				res *iotservice.MethodResult
				err error
			)
			for range attempts {
				c, cancel := context.WithTimeout(ctx, 60*time.Second)
				res, err = h.svc.CallDeviceMethod(c, m.ID, &iotservice.MethodCall{
					MethodName: protocol.MethodFirmwareUpdate, ResponseTimeout: 5, ConnectTimeout: 10,
					Payload: map[string]any{protocol.FieldPackageURI: "https://fw.example/v2.bin", protocol.FieldVersion: "2.0.0", protocol.FieldUpdateID: "u1"},
				})
				cancel()
				if err == nil {
					break
				}
			}
			results <- outcome{m, res, err}
		}()
	}
	wg.Wait()
	close(results)
	for o := range results {
		if o.m.Profile == Unresponsive {
			var re *iotservice.RequestError
			if assert.ErrorAs(t, o.err, &re, o.m.ID) {
				assert.Equal(t, http.StatusGatewayTimeout, re.Code, o.m.ID)
			}
			continue
		}
		if assert.NoError(t, o.err, o.m.ID) {
			assert.Equal(t, http.StatusOK, o.res.Status, o.m.ID)
		}
	}

	reported := func(c require.TestingT, id string) map[string]any {
		tw, err := h.svc.GetDeviceTwin(ctx, id)
		require.NoError(c, err)
		return tw.Properties.Reported
	}
	for _, p := range []Profile{Healthy, Slow, Flapping} {
		for _, m := range byProfile[p] {
			var rep map[string]any
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				rep = reported(c, m.ID)
				assert.Equal(c, protocol.StatusCompleted, rep[protocol.PropFirmwareStatus])
			}, 30*time.Second, 50*time.Millisecond, m.ID+" completed")
			assert.Equal(t, "2.0.0", rep[protocol.PropFirmwareVersion], m.ID)
			if p == Slow {
				from, _ := time.Parse(time.RFC3339Nano, rep[protocol.PropDownloadComplete].(string))
				to, _ := time.Parse(time.RFC3339Nano, rep[protocol.PropLastFirmwareUpdate].(string))
				assert.GreaterOrEqual(t, to.Sub(from), 2*2*stage, "%s: two stages at factor 2", m.ID)
			}
		}
	}
	for _, m := range byProfile[Failing] {
		var rep map[string]any
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			rep = reported(c, m.ID)
			assert.Equal(c, protocol.StatusError, rep[protocol.PropFirmwareStatus])
		}, 30*time.Second, 50*time.Millisecond, m.ID+" failed")
		assert.Equal(t, m.FailStage, rep[protocol.PropFirmwareErrStage], m.ID)
		assert.Equal(t, "1.0.0", rep[protocol.PropFirmwareVersion], m.ID)
	}
	require.Eventually(t, func() bool {
		st := f.Stats()
		return st.Completed == 35 && st.Failed == 5 && st.Updating == 0
	}, 10*time.Second, 50*time.Millisecond, "counters")
	assert.GreaterOrEqual(t, f.Stats().MethodCalls, int64(45))

	out := logs.String()
	for _, p := range Profiles {
		assert.Contains(t, out, fmt.Sprintf("profile=%s", p))
	}
	assert.Contains(t, out, `msg="fleet profile" profile=offline count=5 devices=`)
	assert.Contains(t, out, "fail_stage=")
	assert.Contains(t, out, `msg="fleet registered" devices=50 created=50 existing=0 bulk=true`)
	assert.Contains(t, out, `msg="fleet started"`)
	assert.Contains(t, out, `msg="fleet summary"`)
	for _, key := range []string{"connected=", "updating=", "completed=", "failed=", "reboots=", "method_calls="} {
		assert.Contains(t, out, key)
	}
	_, key, _ := strings.Cut(h.ServiceConnectionString(), "SharedAccessKey=")
	assert.NotContains(t, out, key)
}

// A second fleet on the same hub finds its identities and keys.
func TestFleetRestart(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	run := func() *testlog.Sink {
		logs, logger := testlog.New(t, slog.LevelInfo)
		f, err := New(Config{Count: 5, Prefix: "re-", Service: h.service, CAFile: h.CACertFile(),
			Brokers: []string{"tls://" + h.MQTTAddr()}, StageDuration: 200 * time.Millisecond, Logger: logger})
		require.NoError(t, err)
		stop := runUntilReady(t, f, 30*time.Second)
		assert.Equal(t, 5, f.Stats().Connected)
		stop()
		return logs
	}
	assert.Contains(t, run().String(), "created=5 existing=0")
	assert.Contains(t, run().String(), "created=0 existing=5")
}

// A fleet with a tutorial share: its tutorial devices play the tutorials'
// apps whatever the fleet's reboot style, the others keep the dmflow
// contract.
func TestFleetTutorialContract(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	logs, logger := testlog.New(t, slog.LevelInfo)
	const reboot = 300 * time.Millisecond
	f, err := New(Config{
		Count: 8, Seed: 3, Faults: Faults{Tutorial: 0.5},
		Service: h.service, CAFile: h.CACertFile(), Brokers: []string{"tls://" + h.MQTTAddr()},
		RebootStyle: device.StyleRealistic, RebootDuration: reboot, StageDuration: 100 * time.Millisecond,
		Logger: logger,
	})
	require.NoError(t, err)
	byForm := map[string][]Member{}
	for i, m := range f.Members() {
		byForm[m.Contract+"/"+m.Answer] = append(byForm[m.Contract+"/"+m.Answer], m)
		c := f.deviceConfig(i, m, hubconn.Device{})
		assert.Equal(t, m.Contract, c.Contract, m.ID)
		if m.Contract == device.ContractTutorial {
			assert.Equal(t, device.StyleTutorial, c.RebootStyle, m.ID)
			assert.Equal(t, m.Answer, c.Answer, m.ID)
		} else {
			assert.Equal(t, device.StyleRealistic, c.RebootStyle, m.ID)
		}
	}
	require.Len(t, byForm["dmflow/"], 4)
	require.Len(t, byForm["tutorial/object"], 2)
	require.Len(t, byForm["tutorial/string"], 2)

	stop := runUntilReady(t, f, 60*time.Second)
	t.Cleanup(stop)
	ctx := context.Background()
	callMethod := func(id, method string, payload map[string]any) (*iotservice.MethodResult, error) {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return h.svc.CallDeviceMethod(c, id, &iotservice.MethodCall{MethodName: method, ResponseTimeout: 10, Payload: payload})
	}

	// A tutorial device answers rebootDevice after the reboot, with
	// rebootTime in the twin and no request ID.
	id := byForm["tutorial/object"][0].ID
	begin := time.Now()
	res, err := callMethod(id, protocol.MethodReboot, map[string]any{protocol.FieldRequestID: "r1"})
	require.NoError(t, err)
	assert.Equal(t, map[string]any{device.FieldResponse: device.TutorialResponse}, res.Payload)
	assert.GreaterOrEqual(t, time.Since(begin), reboot)
	tw, err := h.svc.GetDeviceTwin(ctx, id)
	require.NoError(t, err)
	assert.Regexp(t, `^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`, tw.Properties.Reported[protocol.PropRebootTime])
	assert.NotContains(t, tw.Properties.Reported, protocol.PropLastRebootRequestID)
	assert.NotContains(t, tw.Properties.Reported, protocol.PropFirmwareVersion)
	assert.EqualValues(t, 1, f.Device(id).Reboots())

	// A dmflow device of the same fleet reboots in the fleet's style.
	res, err = callMethod(byForm["dmflow/"][0].ID, protocol.MethodReboot, map[string]any{protocol.FieldRequestID: "r1"})
	require.NoError(t, err)
	assert.Equal(t, device.RebootingResponse, res.Payload[device.FieldResponse])

	// The string form: the service client, which decodes payloads into a
	// map, cannot read it (internal/sim/device tests read it raw).
	fw := map[string]any{protocol.FieldPackageURI: "https://fw.example/v2.bin"}
	_, err = callMethod(byForm["tutorial/string"][0].ID, protocol.MethodFirmwareUpdate, fw)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "string")
	res, err = callMethod(byForm["tutorial/object"][1].ID, protocol.MethodFirmwareUpdate, fw)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{device.FieldResponse: device.FirmwareStartedResponse}, res.Payload)
	require.Eventually(t, func() bool { return f.Stats().Completed == 2 }, 10*time.Second, 50*time.Millisecond, "both updates completed")

	out := logs.String()
	assert.Contains(t, out, `msg="fleet contract" contract=dmflow count=4 devices=`)
	assert.Contains(t, out, `msg="fleet contract" contract=tutorial answer=object count=2 devices=`)
	assert.Contains(t, out, `msg="fleet contract" contract=tutorial answer=string count=2 devices=`)
	assert.Contains(t, out, `msg="fleet profile" profile=healthy count=8 devices=`)
}
