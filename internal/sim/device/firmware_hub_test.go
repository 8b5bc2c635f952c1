package device

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/protocol"
)

// Firmware tests run the tutorial's stages with short stage durations
// against a real in-process localhub.

const testStage = 200 * time.Millisecond

func fwPayload(uri, version, updateID string) map[string]any {
	p := map[string]any{protocol.FieldPackageURI: uri}
	if version != "" {
		p[protocol.FieldVersion] = version
	}
	if updateID != "" {
		p[protocol.FieldUpdateID] = updateID
	}
	return p
}

// waitReported polls the twin until cond holds for its reported
// properties and returns them.
func waitReported(t *testing.T, h *testHub, id, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var rep map[string]any
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		rep = reported(c, h, id)
		assert.True(c, cond(rep), "reported %v", rep)
	}, 30*time.Second, 50*time.Millisecond, what)
	return rep
}

func statusIs(status, updateID string) func(map[string]any) bool {
	return func(rep map[string]any) bool {
		return rep[protocol.PropFirmwareStatus] == status && rep[protocol.PropFirmwareUpdateID] == updateID
	}
}

// waitCount waits until a device counter reaches want: the device counts
// an update once the hub acknowledged its report, a moment after the twin
// shows it.
func waitCount(t *testing.T, counter func() int64, want int64) {
	t.Helper()
	require.Eventually(t, func() bool { return counter() == want }, 10*time.Second, 50*time.Millisecond, fmt.Sprintf("counter at %d", want))
	assert.Equal(t, want, counter())
}

func reportedTime(t *testing.T, rep map[string]any, prop string) time.Time {
	t.Helper()
	s, ok := rep[prop].(string)
	require.True(t, ok, "%s missing in %v", prop, rep)
	at, err := time.Parse(time.RFC3339Nano, s)
	require.NoError(t, err, "%s %q", prop, s)
	return at
}

func TestFirmwareUpdateTutorial(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-fw")
	d := startDeviceWith(t, h, conn, func(c *Config) { c.StageDuration = testStage })

	// At start: standBy with the time and the running version.
	rep := reported(t, h, "dev-fw")
	assert.Equal(t, protocol.StatusStandBy, rep[protocol.PropFirmwareStatus])
	assert.Equal(t, DefaultFirmwareVersion, rep[protocol.PropFirmwareVersion])
	reportedTime(t, rep, protocol.PropLogTime)

	begin := time.Now()
	res := call(t, h, "dev-fw", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin?sig=secret", "2.0.0", "u1"))
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: FirmwareStartedResponse}, res.Payload)
	assert.True(t, d.Firmware().Updating)

	rep = waitReported(t, h, "dev-fw", "completed", statusIs(protocol.StatusCompleted, "u1"))
	assert.Equal(t, "2.0.0", rep[protocol.PropFirmwareVersion])
	downloaded := reportedTime(t, rep, protocol.PropDownloadComplete)
	applying := reportedTime(t, rep, protocol.PropStartedApplyingImage)
	completed := reportedTime(t, rep, protocol.PropLastFirmwareUpdate)
	assert.True(t, downloaded.After(begin.Add(-time.Millisecond)), "downloadComplete %s before the call %s", downloaded, begin)
	assert.True(t, applying.After(downloaded), "applying %s not after download %s", applying, downloaded)
	assert.True(t, completed.After(applying), "completed %s not after applying %s", completed, applying)
	assert.NotContains(t, rep, protocol.PropFirmwareError)
	waitCount(t, d.FirmwareApplies, 1)
	assert.Equal(t, FirmwareState{Version: "2.0.0", Status: protocol.StatusCompleted, UpdateID: "u1"}, d.Firmware())

	// The same update ID after completion: nothing is applied again.
	res = call(t, h, "dev-fw", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: "Firmware update u1 already completed", protocol.PropFirmwareStatus: protocol.StatusCompleted}, res.Payload)
	time.Sleep(3 * testStage)
	assert.Equal(t, rep[protocol.PropLastFirmwareUpdate], reported(t, h, "dev-fw")[protocol.PropLastFirmwareUpdate])
	assert.EqualValues(t, 1, d.FirmwareApplies())
	assert.EqualValues(t, 2, d.MethodCalls())
	assert.Equal(t, 2, h.MethodInvocations("dev-fw")[MethodFirmwareUpdate])

	require.NoError(t, d.stop(t))
	logs := d.log.String()
	assert.Contains(t, logs, "method="+MethodFirmwareUpdate)
	assert.Contains(t, logs, "update_id=u1")
	assert.NotContains(t, logs, "sig=secret", "the package URI's query is not logged")
	_, key, _ := strings.Cut(conn.String(), "SharedAccessKey=")
	assert.NotContains(t, logs, key)
}

func TestFirmwareUpdateBadPayload(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-fw-bad"), func(c *Config) { c.StageDuration = testStage })
	for _, tc := range []struct {
		name    string
		payload map[string]any
		want    string
	}{
		{"missing", map[string]any{"version": "2.0.0"}, "fwPackageUri is missing"},
		{"relative", fwPayload("v2.bin", "2.0.0", "u1"), "not an absolute http or https URL"},
		{"ftp", fwPayload("ftp://fw.example/v2.bin", "", ""), "not an absolute http or https URL"},
		{"number", map[string]any{"fwPackageUri": 7}, "must be a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := call(t, h, "dev-fw-bad", MethodFirmwareUpdate, tc.payload)
			assert.Equal(t, http.StatusBadRequest, res.Status)
			assert.Contains(t, res.Payload["error"], tc.want)
		})
	}
	time.Sleep(2 * testStage)
	assert.Equal(t, FirmwareState{Version: DefaultFirmwareVersion, Status: protocol.StatusStandBy}, d.Firmware())
	assert.Equal(t, protocol.StatusStandBy, reported(t, h, "dev-fw-bad")[protocol.PropFirmwareStatus])
	assert.EqualValues(t, 0, d.FirmwareApplies())
}

func TestFirmwareUpdateRepeatAndConflict(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	// Long enough stages that the repeats below land while u1 runs.
	d := startDeviceWith(t, h, h.provision(t, "dev-fw-rep"), func(c *Config) { c.StageDuration = time.Second })

	res := call(t, h, "dev-fw-rep", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	require.Equal(t, FirmwareStartedResponse, res.Payload[FieldResponse])
	res = call(t, h, "dev-fw-rep", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, "Firmware update u1 already downloading", res.Payload[FieldResponse])
	assert.Equal(t, protocol.StatusDownloading, res.Payload[protocol.PropFirmwareStatus])

	res = call(t, h, "dev-fw-rep", MethodFirmwareUpdate, fwPayload("https://fw.example/v3.bin", "3.0.0", "u2"))
	assert.Equal(t, http.StatusConflict, res.Status)
	assert.Equal(t, map[string]any{"error": "firmware update u1 in progress"}, res.Payload)

	waitReported(t, h, "dev-fw-rep", "applying", statusIs(protocol.StatusApplying, "u1"))
	require.Eventually(t, func() bool { return d.Firmware().Status == protocol.StatusApplying }, 5*time.Second, 50*time.Millisecond, "device applying")
	res = call(t, h, "dev-fw-rep", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	assert.Equal(t, "Firmware update u1 already applying", res.Payload[FieldResponse])

	waitReported(t, h, "dev-fw-rep", "u1 completed", statusIs(protocol.StatusCompleted, "u1"))
	waitCount(t, d.FirmwareApplies, 1)

	// A new update ID after completion is a new update.
	res = call(t, h, "dev-fw-rep", MethodFirmwareUpdate, fwPayload("https://fw.example/v3.bin", "3.0.0", "u2"))
	assert.Equal(t, FirmwareStartedResponse, res.Payload[FieldResponse])
	rep := waitReported(t, h, "dev-fw-rep", "u2 completed", statusIs(protocol.StatusCompleted, "u2"))
	assert.Equal(t, "3.0.0", rep[protocol.PropFirmwareVersion])
	waitCount(t, d.FirmwareApplies, 2)
}

// Without an update ID the version and the URI (without its query, where
// SAS tokens change) are the key.
func TestFirmwareUpdateKeyWithoutID(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-fw-key"), func(c *Config) { c.StageDuration = testStage })
	res := call(t, h, "dev-fw-key", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin?sig=a", "2.0.0", ""))
	require.Equal(t, FirmwareStartedResponse, res.Payload[FieldResponse])
	rep := waitReported(t, h, "dev-fw-key", "completed", statusIs(protocol.StatusCompleted, "2.0.0@https://fw.example/v2.bin"))
	assert.NotContains(t, rep[protocol.PropFirmwareUpdateID], "sig")

	res = call(t, h, "dev-fw-key", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin?sig=b", "2.0.0", ""))
	assert.Equal(t, "Firmware update 2.0.0@https://fw.example/v2.bin already completed", res.Payload[FieldResponse])
	waitCount(t, d.FirmwareApplies, 1)
}

func TestFirmwareUpdateInjectedFailure(t *testing.T) {
	t.Parallel()
	for _, stage := range []string{protocol.StatusDownloading, protocol.StatusApplying} {
		t.Run(stage, func(t *testing.T) {
			t.Parallel()
			h := startHub(t, t.TempDir(), "", "")
			id := "dev-fw-fail-" + stage
			d := startDeviceWith(t, h, h.provision(t, id), func(c *Config) {
				c.StageDuration = testStage
				c.FailStage = stage
				c.FailReason = "checksum mismatch"
			})
			res := call(t, h, id, MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
			require.Equal(t, FirmwareStartedResponse, res.Payload[FieldResponse])

			rep := waitReported(t, h, id, "error", statusIs(protocol.StatusError, "u1"))
			assert.Equal(t, "checksum mismatch", rep[protocol.PropFirmwareError])
			assert.Equal(t, stage, rep[protocol.PropFirmwareErrStage])
			assert.Equal(t, DefaultFirmwareVersion, rep[protocol.PropFirmwareVersion], "the old version stays")
			assert.NotContains(t, rep, protocol.PropLastFirmwareUpdate)
			if stage == protocol.StatusDownloading {
				assert.NotContains(t, rep, protocol.PropDownloadComplete, "the download never completed")
			} else {
				reportedTime(t, rep, protocol.PropStartedApplyingImage)
			}
			assert.EqualValues(t, 0, d.FirmwareApplies())
			waitCount(t, d.FirmwareFailures, 1)

			// The same update ID stays failed; a new one is tried (and fails
			// again: the fault is the device's).
			res = call(t, h, id, MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
			assert.Equal(t, "Firmware update u1 already error", res.Payload[FieldResponse])
			assert.Equal(t, stage, res.Payload[protocol.PropFirmwareErrStage])
			res = call(t, h, id, MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u2"))
			assert.Equal(t, FirmwareStartedResponse, res.Payload[FieldResponse])
			waitReported(t, h, id, "u2 error", statusIs(protocol.StatusError, "u2"))
			waitCount(t, d.FirmwareFailures, 2)
		})
	}
}

// A new simdevice process on the same identity runs the version the last
// one installed and recognises its update.
func TestFirmwareSurvivesProcessRestart(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-fw-restart")
	d := startDeviceWith(t, h, conn, func(c *Config) { c.StageDuration = testStage })
	call(t, h, "dev-fw-restart", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	waitReported(t, h, "dev-fw-restart", "completed", statusIs(protocol.StatusCompleted, "u1"))
	require.NoError(t, d.stop(t))

	d2 := startDeviceWith(t, h, conn, func(c *Config) { c.StageDuration = testStage })
	assert.Equal(t, "2.0.0", d2.Firmware().Version)
	rep := reported(t, h, "dev-fw-restart")
	assert.Equal(t, protocol.StatusStandBy, rep[protocol.PropFirmwareStatus], "a new process starts in standBy")
	assert.Equal(t, "2.0.0", rep[protocol.PropFirmwareVersion])
	res := call(t, h, "dev-fw-restart", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	assert.Equal(t, "Firmware update u1 already completed", res.Payload[FieldResponse])
	assert.EqualValues(t, 0, d2.FirmwareApplies())
}

// A process stopped during an update loses it; the next one reports it as
// failed in the stage it was in.
func TestFirmwareInterruptedByProcessRestart(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-fw-int")
	d := startDeviceWith(t, h, conn, func(c *Config) { c.StageDuration = time.Second })
	call(t, h, "dev-fw-int", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	waitReported(t, h, "dev-fw-int", "downloading", statusIs(protocol.StatusDownloading, "u1"))
	require.NoError(t, d.stop(t))

	d2 := startDeviceWith(t, h, conn, func(c *Config) { c.StageDuration = time.Second })
	rep := reported(t, h, "dev-fw-int")
	assert.Equal(t, protocol.StatusError, rep[protocol.PropFirmwareStatus])
	assert.Equal(t, "u1", rep[protocol.PropFirmwareUpdateID])
	assert.Equal(t, protocol.StatusDownloading, rep[protocol.PropFirmwareErrStage])
	assert.Contains(t, rep[protocol.PropFirmwareError], "interrupted")
	assert.Equal(t, DefaultFirmwareVersion, d2.Firmware().Version)
	res := call(t, h, "dev-fw-int", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	assert.Equal(t, "Firmware update u1 already error", res.Payload[FieldResponse])
	assert.EqualValues(t, 1, d2.FirmwareFailures())
}

// A realistic reboot during an update does not stop it: reports due while
// the device is offline follow when it is back.
func TestFirmwareUpdateAcrossReboot(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-fw-reboot"), func(c *Config) {
		c.StageDuration = 500 * time.Millisecond
		c.RebootStyle = StyleRealistic
		c.RebootDuration = time.Second
	})
	call(t, h, "dev-fw-reboot", MethodFirmwareUpdate, fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"))
	res := call(t, h, "dev-fw-reboot", MethodReboot, map[string]any{FieldRequestID: "r1"})
	require.Equal(t, RebootingResponse, res.Payload[FieldResponse])
	rep := waitReported(t, h, "dev-fw-reboot", "completed", statusIs(protocol.StatusCompleted, "u1"))
	assert.Equal(t, "2.0.0", rep[protocol.PropFirmwareVersion])
	waitRebootTime(t, h, "dev-fw-reboot", time.Time{}, 20*time.Second)
	waitCount(t, d.FirmwareApplies, 1)
	assert.EqualValues(t, 1, d.Reboots())
	require.NoError(t, d.stop(t))
}

func TestUnresponsiveDevice(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-mute"), func(c *Config) { c.Unresponsive = true })
	for _, method := range []string{MethodFirmwareUpdate, "selfDestruct"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := h.svc.CallDeviceMethod(ctx, "dev-mute", &iotservice.MethodCall{
			MethodName: method, ResponseTimeout: 5, Payload: fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"),
		})
		cancel()
		var re *iotservice.RequestError
		require.ErrorAs(t, err, &re, method)
		assert.Equal(t, http.StatusGatewayTimeout, re.Code, method)
	}
	assert.EqualValues(t, 2, d.MethodCalls())
	assert.False(t, d.Firmware().Updating)
	require.NoError(t, d.stop(t))
}

func TestFlappingDevice(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-flap"), func(c *Config) {
		c.FlapInterval = time.Second
		c.StageDuration = testStage
	})
	require.Eventually(t, func() bool { return d.Connections() >= 3 }, 20*time.Second, 50*time.Millisecond, "three connections")
	assert.Contains(t, d.log.String(), "flapping: offline")

	// A caller that waits for the device (connectTimeout) and retries a
	// call lost in a drop gets through; the update ID makes the retry safe.
	var res *iotservice.MethodResult
	for attempt := 1; res == nil; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := h.svc.CallDeviceMethod(ctx, "dev-flap", &iotservice.MethodCall{
			MethodName: MethodFirmwareUpdate, ResponseTimeout: 5, ConnectTimeout: 5,
			Payload: fwPayload("https://fw.example/v2.bin", "2.0.0", "u1"),
		})
		cancel()
		if err != nil && attempt < 5 {
			t.Logf("attempt %d: %v", attempt, err)
			continue
		}
		require.NoError(t, err)
		res = r
	}
	assert.Equal(t, http.StatusOK, res.Status)
	// Reports due while offline follow when the device is back.
	waitReported(t, h, "dev-flap", "completed", statusIs(protocol.StatusCompleted, "u1"))
	require.NoError(t, d.stop(t))
}
