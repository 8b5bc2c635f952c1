package device

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/amenzhinsky/iothub/common"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
)

// Tutorial-contract devices against a real in-process localhub.

// pythonTimeRE is str(datetime.datetime.now()).
var pythonTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$`)

// pythonTime parses a reported Python timestamp in the local zone.
func pythonTime(t *testing.T, rep map[string]any, prop string) time.Time {
	t.Helper()
	s, ok := rep[prop].(string)
	require.True(t, ok, "%s missing in %v", prop, rep)
	require.Regexp(t, pythonTimeRE, s, "%s is not Python's str(datetime.now())", prop)
	layout := PythonTimeFormat
	if len(s) == len(time.DateTime) {
		layout = time.DateTime
	}
	at, err := time.ParseInLocation(layout, s, time.Local)
	require.NoError(t, err)
	return at
}

// assertBetween checks that at, a reported local time with microseconds,
// lies between from and to. A device that reported UTC in a process whose
// zone is not UTC fails it.
func assertBetween(t *testing.T, what string, at, from, to time.Time) {
	t.Helper()
	from = from.Truncate(time.Microsecond)
	assert.False(t, at.Before(from) || at.After(to), "%s %s is not between %s and %s (local time)",
		what, at.Format(PythonTimeFormat), from.Format(PythonTimeFormat), to.Format(PythonTimeFormat))
}

// assertNoDmflowFields checks that the twin holds nothing the tutorial's
// device does not report.
func assertNoDmflowFields(t *testing.T, rep map[string]any) {
	t.Helper()
	for _, p := range []string{PropLastRebootRequestID, protocol.PropFirmwareUpdateID, protocol.PropFirmwareVersion,
		protocol.PropFirmwareError, protocol.PropFirmwareErrStage} {
		assert.NotContains(t, rep, p)
	}
}

// rawCall invokes method with a plain HTTPS POST /twins/{id}/methods and
// returns the hub's status and payload undecoded: the service client
// decodes payloads into a map and fails on a JSON string.
func rawCall(t *testing.T, h *testHub, id, method string, payload any) (int, json.RawMessage) {
	t.Helper()
	sak, err := common.ParseConnectionString(h.ServiceConnectionString(), "HostName", "SharedAccessKeyName", "SharedAccessKey")
	require.NoError(t, err)
	tok, err := common.NewSharedAccessSignature(sak["HostName"], sak["SharedAccessKeyName"], sak["SharedAccessKey"], time.Now().Add(time.Minute))
	require.NoError(t, err)
	tlsCfg, err := hubconn.TLSConfig(h.CACertFile())
	require.NoError(t, err)
	tlsCfg.ServerName = "localhost"
	body, err := json.Marshal(map[string]any{"methodName": method, "payload": payload, "responseTimeoutInSeconds": 30})
	require.NoError(t, err)
	u := "https://" + h.HTTPSAddr() + "/twins/" + url.PathEscape(id) + "/methods?api-version=2020-09-30"
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", tok.String())
	req.Header.Set("Content-Type", "application/json")
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "POST %s: %s", u, b)
	var out struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	require.NoError(t, json.Unmarshal(b, &out), "%s", b)
	return out.Status, out.Payload
}

func tutorialDevice(answer string, reboot, stage time.Duration) func(*Config) {
	return func(c *Config) {
		c.Contract, c.Answer = ContractTutorial, answer
		c.RebootDuration, c.StageDuration = reboot, stage
	}
}

func TestTutorialContractReboot(t *testing.T) {
	t.Parallel()
	testZone(t)
	const reboot = 500 * time.Millisecond
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-tut"), tutorialDevice("", reboot, testStage))

	begin := time.Now()
	res := call(t, h, "dev-tut", MethodReboot, map[string]any{"method_number": "42", FieldRequestID: "r1"})
	end := time.Now()
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: TutorialResponse}, res.Payload)
	assert.GreaterOrEqual(t, end.Sub(begin), reboot, "the tutorial device answers after its reboot")

	// Reported before the answer, in Python's local format, and nothing
	// else: no request ID.
	rep := reported(t, h, "dev-tut")
	first := pythonTime(t, rep, PropRebootTime)
	assertBetween(t, PropRebootTime, first, begin.Add(reboot), end)
	assertNoDmflowFields(t, rep)
	assert.EqualValues(t, 1, d.Reboots())

	// The same request ID again: the tutorial's device reboots again.
	second := time.Now()
	res = call(t, h, "dev-tut", MethodReboot, map[string]any{"method_number": "42", FieldRequestID: "r1"})
	end = time.Now()
	assert.Equal(t, map[string]any{FieldResponse: TutorialResponse}, res.Payload)
	assert.GreaterOrEqual(t, end.Sub(second), reboot)
	rep = reported(t, h, "dev-tut")
	assertBetween(t, PropRebootTime, pythonTime(t, rep, PropRebootTime), second.Add(reboot), end)
	assertNoDmflowFields(t, rep)
	assert.EqualValues(t, 2, d.Reboots())
	assert.EqualValues(t, 2, d.MethodCalls())
	assert.Equal(t, 2, h.MethodInvocations("dev-tut")[MethodReboot])

	// A reboot does not report the firmware's start state again.
	assert.Equal(t, protocol.StatusStandBy, rep[protocol.PropFirmwareStatus])
	require.NoError(t, d.stop(t))
	assert.Contains(t, d.log.String(), "contract=tutorial")
}

func TestTutorialContractFirmware(t *testing.T) {
	t.Parallel()
	testZone(t)
	h := startHub(t, t.TempDir(), "", "")
	conn := h.provision(t, "dev-tut-fw")
	started := time.Now()
	// Stages long enough to read the twin between the answer and the
	// first stage.
	const stage = 2 * testStage
	d := startDeviceWith(t, h, conn, tutorialDevice(AnswerObject, time.Second, stage))

	// At start: standBy and logTime, nothing else.
	rep := reported(t, h, "dev-tut-fw")
	assert.Equal(t, protocol.StatusStandBy, rep[protocol.PropFirmwareStatus])
	assertBetween(t, protocol.PropLogTime, pythonTime(t, rep, protocol.PropLogTime), started, time.Now())
	assertNoDmflowFields(t, rep)

	// version and updateId are ignored.
	payload := fwPayload("https://fw.example/v2.bin?sig=secret", "2.0.0", "u1")
	begin := time.Now()
	res := call(t, h, "dev-tut-fw", MethodFirmwareUpdate, payload)
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: FirmwareStartedResponse}, res.Payload)
	// Answered at once: before the first stage is reported.
	assert.Equal(t, protocol.StatusStandBy, reported(t, h, "dev-tut-fw")[protocol.PropFirmwareStatus])
	assert.True(t, d.Firmware().Updating)

	rep = waitReported(t, h, "dev-tut-fw", "completed", func(rep map[string]any) bool {
		return rep[protocol.PropFirmwareStatus] == protocol.StatusCompleted
	})
	end := time.Now()
	downloaded := pythonTime(t, rep, protocol.PropDownloadComplete)
	applying := pythonTime(t, rep, protocol.PropStartedApplyingImage)
	completed := pythonTime(t, rep, protocol.PropLastFirmwareUpdate)
	assertBetween(t, protocol.PropDownloadComplete, downloaded, begin.Add(stage), end)
	assertBetween(t, protocol.PropStartedApplyingImage, applying, downloaded.Add(stage), end)
	assertBetween(t, protocol.PropLastFirmwareUpdate, completed, applying.Add(stage), end)
	assertNoDmflowFields(t, rep)
	waitCount(t, d.FirmwareApplies, 1)
	assert.Equal(t, FirmwareState{Version: DefaultFirmwareVersion, Status: protocol.StatusCompleted}, d.Firmware())

	// The same call again: the tutorial's device updates again.
	res = call(t, h, "dev-tut-fw", MethodFirmwareUpdate, payload)
	assert.Equal(t, http.StatusOK, res.Status)
	assert.Equal(t, map[string]any{FieldResponse: FirmwareStartedResponse}, res.Payload)
	rep = waitReported(t, h, "dev-tut-fw", "completed again", func(rep map[string]any) bool {
		return rep[protocol.PropFirmwareStatus] == protocol.StatusCompleted && pythonTime(t, rep, protocol.PropLastFirmwareUpdate).After(completed)
	})
	assertNoDmflowFields(t, rep)
	waitCount(t, d.FirmwareApplies, 2)
	assert.Equal(t, 2, h.MethodInvocations("dev-tut-fw")[MethodFirmwareUpdate])

	// No fwPackageUri: refused.
	res = call(t, h, "dev-tut-fw", MethodFirmwareUpdate, map[string]any{"version": "3.0.0"})
	assert.Equal(t, http.StatusBadRequest, res.Status)
	assert.Contains(t, res.Payload["error"], protocol.FieldPackageURI)
	time.Sleep(2 * stage)
	assert.False(t, d.Firmware().Updating)
	assert.EqualValues(t, 2, d.FirmwareApplies())
	assert.EqualValues(t, 0, d.FirmwareFailures())
	assert.EqualValues(t, 3, d.MethodCalls())

	require.NoError(t, d.stop(t))
	assert.NotContains(t, d.log.String(), "sig=secret", "the package URI's query is not logged")
}

func TestTutorialContractStringAnswer(t *testing.T) {
	t.Parallel()
	h := startHub(t, t.TempDir(), "", "")
	d := startDeviceWith(t, h, h.provision(t, "dev-tut-str"), tutorialDevice(AnswerString, 100*time.Millisecond, testStage))

	status, payload := rawCall(t, h, "dev-tut-str", MethodFirmwareUpdate, map[string]any{protocol.FieldPackageURI: "https://fw.example/v2.bin"})
	assert.Equal(t, http.StatusOK, status)
	require.NotEmpty(t, payload)
	assert.Equal(t, byte('"'), payload[0], "the payload is a JSON string: %s", payload)
	var text string
	require.NoError(t, json.Unmarshal(payload, &text), "%s", payload)
	assert.Equal(t, FirmwareStartedText, text)
	waitReported(t, h, "dev-tut-str", "completed", func(rep map[string]any) bool {
		return rep[protocol.PropFirmwareStatus] == protocol.StatusCompleted
	})
	waitCount(t, d.FirmwareApplies, 1)

	// Only firmwareUpdate answers a string.
	status, payload = rawCall(t, h, "dev-tut-str", MethodReboot, map[string]any{"method_number": "42"})
	assert.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"Response": "This is the response from the device"}`, string(payload))
	assert.EqualValues(t, 1, d.Reboots())

	// Unknown methods are answered, not left to time out.
	status, _ = rawCall(t, h, "dev-tut-str", "selfDestruct", map[string]any{})
	assert.Equal(t, http.StatusNotFound, status)
	assert.EqualValues(t, 3, d.MethodCalls())
	require.NoError(t, d.stop(t))
}

// The tutorials' timestamps are local time: the tutorial tests run again in
// a process whose TZ is 5h30 east of UTC, where a UTC time would lie
// outside the windows they check.
func TestTutorialTimesAreLocal(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := []string{"TestPythonTime", "TestTutorialContractReboot", "TestTutorialContractFirmware"}
	cmd := exec.CommandContext(ctx, exe, "-test.run=^("+strings.Join(tests, "|")+")$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "TZ=Asia/Kolkata", envTestZoneOffset+"="+strconv.Itoa(5*3600+30*60))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child tests with TZ=Asia/Kolkata failed:\n%s", out)
	for _, name := range tests {
		assert.Contains(t, string(out), "--- PASS: "+name+" ", "child output:\n%s", out)
	}
}
