//go:build integration

package test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// secretScanner finds credentials in text: the hub's and the devices' keys
// in every encoding they could take, their connection strings, and anything
// shaped like a SAS token or a connection string's key, whoever's it is.
type secretScanner struct {
	literals map[string]string // needle → what it is
}

func newSecretScanner() *secretScanner {
	return &secretScanner{literals: map[string]string{}}
}

// tokenShapes are credentials recognised by their form.
var tokenShapes = []struct {
	what string
	re   *regexp.Regexp
}{
	{"a SAS token", regexp.MustCompile(`SharedAccessSignature\s+(sr|sig|se|skn)=`)},
	{"a sig= parameter", regexp.MustCompile(`(^|[?&;\s"'])sig=[A-Za-z0-9%+/=_-]{8,}`)},
	{"a connection string's key", regexp.MustCompile(`SharedAccessKey=[A-Za-z0-9%+/=_-]{8,}`)},
}

// addLiteral adds a secret string, also in its URL- and JSON-escaped forms.
func (s *secretScanner) addLiteral(what, v string) {
	if len(v) < 8 {
		panic(fmt.Sprintf("secret %s too short to scan for: %q", what, v))
	}
	add := func(needle, what string) {
		if _, ok := s.literals[needle]; !ok { // the plainest name of a form wins
			s.literals[needle] = what
		}
	}
	add(v, what)
	add(url.QueryEscape(v), what+" (URL-encoded)")
	if j, err := json.Marshal(v); err == nil {
		add(strings.Trim(string(j), `"`), what+" (JSON-escaped)")
	}
}

// addKey adds a base64 key: as given, and its bytes in every base64
// alphabet, padded or not, and in hex.
func (s *secretScanner) addKey(what, b64 string) {
	s.addLiteral(what, b64)
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		panic(fmt.Sprintf("%s is not base64: %v", what, err))
	}
	// In this order: where two alphabets give the same text, the first names it.
	for _, e := range []struct {
		name string
		enc  *base64.Encoding
	}{{"std", base64.StdEncoding}, {"raw std", base64.RawStdEncoding}, {"url", base64.URLEncoding}, {"raw url", base64.RawURLEncoding}} {
		s.addLiteral(what+" ("+e.name+" base64)", e.enc.EncodeToString(raw))
	}
	s.addLiteral(what+" (hex)", hex.EncodeToString(raw))
	s.addLiteral(what+" (HEX)", strings.ToUpper(hex.EncodeToString(raw)))
}

// scan returns what it found in text, sorted; none is nil.
func (s *secretScanner) scan(text string) []string {
	found := map[string]bool{}
	for needle, what := range s.literals {
		if strings.Contains(text, needle) {
			found[what] = true
		}
	}
	for _, sh := range tokenShapes {
		if m := sh.re.FindString(text); m != "" {
			found[sh.what] = true
		}
	}
	var out []string
	for w := range found {
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

// historyText is everything a history holds as text: its JSON, which
// carries payloads base64-encoded, and then every payload's data (inputs,
// results, heartbeat details, memos, search attributes, failure details)
// decoded.
func historyText(t *testing.T, h *historypb.History) string {
	t.Helper()
	b, err := temporalproto.CustomJSONMarshalOptions{}.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	sb.Write(b)
	collectPayloads(h.ProtoReflect(), &sb)
	return sb.String()
}

// collectPayloads appends the data and metadata of every Payload in m.
func collectPayloads(m protoreflect.Message, sb *strings.Builder) {
	if p, ok := m.Interface().(*commonpb.Payload); ok {
		for k, v := range p.GetMetadata() {
			sb.WriteString("\n" + k + "=" + string(v))
		}
		sb.WriteString("\n")
		sb.Write(p.GetData())
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				collectPayloads(v.List().Get(i).Message(), sb)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				collectPayloads(mv.Message(), sb)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			collectPayloads(v.Message(), sb)
		}
		return true
	})
}

// hubSecrets is a scanner for the test localhub's service key and
// connection string; checkHistory uses it too.
func hubSecrets(t *testing.T) *secretScanner {
	t.Helper()
	sc := newSecretScanner()
	sc.addLiteral("the service connection string", env.hubCS)
	sc.addKey("the service key", csKey(t, env.hubCS))
	return sc
}

// csKey is the SharedAccessKey of a connection string.
func csKey(t *testing.T, cs string) string {
	t.Helper()
	for _, part := range strings.Split(cs, ";") {
		if k, ok := strings.CutPrefix(part, "SharedAccessKey="); ok {
			return k
		}
	}
	t.Fatalf("no SharedAccessKey in a connection string of %d characters", len(cs))
	return ""
}

// The scanner finds what it must, wherever a careless change would put
// it, so that TestNoSecretInHistory can fail.
func TestSecretScanner(t *testing.T) {
	// Bytes whose base64 holds + and /, so that the URL alphabet's form differs from the standard
	// one and is found under its own name.
	key := base64.StdEncoding.EncodeToString([]byte("\xfb\xef\xff0123456789abcdef0123456789a\xfb\xef"))
	sc := newSecretScanner()
	sc.addKey("the key", key)
	raw, _ := base64.StdEncoding.DecodeString(key)
	for _, tc := range []struct {
		text string
		want string
	}{
		{"worker ready hub=localhost", ""},
		{"check IOTHUB_CONNECTION_STRING (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)", ""},
		{"connecting with HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=" + key, "a connection string's key"},
		{`{"auth":"SharedAccessSignature sr=h&sig=abc&se=1"}`, "a SAS token"},
		{"https://fw.example/v2.bin?sv=2021&sig=AbCdEf0123456789%3D", "a sig= parameter"},
		{"key " + base64.RawURLEncoding.EncodeToString(raw), "the key (raw url base64)"},
		{"key " + hex.EncodeToString(raw), "the key (hex)"},
		{"key " + url.QueryEscape(key), "the key"},
	} {
		got := strings.Join(sc.scan(tc.text), ",")
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("scan(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}

	// A key planted in a workflow input is found although the history's
	// JSON carries the input base64-encoded.
	input, _ := json.Marshal(map[string]string{"deviceId": "d", "note": "HostName=h;SharedAccessKey=" + key})
	h := &historypb.History{Events: []*historypb.HistoryEvent{{
		EventId:   1,
		EventType: enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
		Attributes: &historypb.HistoryEvent_WorkflowExecutionStartedEventAttributes{WorkflowExecutionStartedEventAttributes: &historypb.WorkflowExecutionStartedEventAttributes{
			Input: &commonpb.Payloads{Payloads: []*commonpb.Payload{{Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: input}}},
		}},
	}}}
	b, _ := temporalproto.CustomJSONMarshalOptions{}.Marshal(h)
	if found := sc.scan(string(b)); len(found) != 0 {
		t.Fatalf("the history's JSON shows the input in clear (%v): the test would not need payloads decoded", found)
	}
	if found := sc.scan(historyText(t, h)); !strings.Contains(strings.Join(found, ","), "the key") {
		t.Errorf("a key in a workflow input went unnoticed: found %v", found)
	}
}

// Every workflow type on the real stack, a Reboot, a FirmwareUpdate with its
// Reboot child, a Rollout with its device workflows and a scheduled Rollout:
// no history (every run, children included), schedule, log line or metric
// holds the service connection string or key, a device's key, a SAS token
// or a signature.
func TestNoSecretInHistory(t *testing.T) {
	const queue = "it-secrets"
	c := temporalClient(t)
	w := startWorkerWith(t, hubEnv("DMFLOW_TASK_QUEUE="+queue, "DMFLOW_METRICS_ADDRESS=127.0.0.1:0"))
	devices := []string{"sec-1", "sec-2"}
	var devProcs []*proc
	for _, d := range devices {
		devProcs = append(devProcs, startDevice(t, d, "--stage-duration", "1s", "--reboot-duration", "1s"))
	}

	sc := hubSecrets(t)
	svc := serviceClient(t)
	for _, d := range devices {
		dev, err := svc.GetDevice(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		sc.addKey(d+"'s primary key", dev.Authentication.SymmetricKey.PrimaryKey)
		sc.addKey(d+"'s secondary key", dev.Authentication.SymmetricKey.SecondaryKey)
		sc.addLiteral(d+"'s connection string", "HostName=localhost;DeviceId="+d+";SharedAccessKey="+dev.Authentication.SymmetricKey.PrimaryKey)
	}

	var outputs []string // every starter's stdout and stderr
	starter := func(timeout time.Duration, args ...string) string {
		t.Helper()
		stdout, stderr, code := runStarter(t, timeout, args...)
		outputs = append(outputs, stdout, stderr)
		if code != 0 {
			t.Fatalf("starter %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
		return stdout
	}
	starter(3*time.Minute, "reboot", "--device", "sec-1", "--request-id", "sec-r1", "--task-queue", queue, "--wait", "-o", "json")
	starter(3*time.Minute, "firmware", "--device", "sec-1", "--uri", "https://fw.example/sec-2.0.0.bin", "--version", "2.0.0",
		"--update-id", "sec-u1", "--reboot", "--task-queue", queue, "--wait", "-o", "json")
	starter(5*time.Minute, "rollout", "start", "--name", "sec-fw", "--devices", strings.Join(devices, ","),
		"--firmware", "https://fw.example/sec-3.0.0.bin", "--version", "3.0.0", "--task-queue", queue, "--wait", "-o", "json")
	deleteSchedulesAtEnd(t, c, "sec-weekly")
	starter(time.Minute, "schedule", "create", "sec-weekly", "--interval", "24h", "--reboot", "--devices", strings.Join(devices, ","), "--task-queue", queue, "-o", "json")
	var trig triggerResult
	if err := json.Unmarshal([]byte(starter(time.Minute, "schedule", "trigger", "sec-weekly", "-o", "json")), &trig); err != nil || !trig.Started {
		t.Fatalf("schedule trigger: %+v, %v", trig, err)
	}
	starter(3*time.Minute, "rollout", "watch", trig.Rollout, "-o", "json")
	outputs = append(outputs, starter(time.Minute, "schedule", "describe", "sec-weekly", "-o", "json"))

	// Every run of every workflow on the queue, children included; the
	// visibility store catches up with the last closes.
	type run struct{ typ, id, runID string }
	var runs []run
	// Reboot: 1 + a firmware's child; FirmwareUpdate: 1; Rollout: 2; the rollouts' devices run
	// in a shard each.
	want := map[string]int{"Reboot": 2, "FirmwareUpdate": 1, "Rollout": 2, "RolloutShard": 2}
	deadline := time.Now().Add(time.Minute)
	for {
		runs = runs[:0]
		got := map[string]int{}
		open := 0
		var token []byte
		for {
			resp, err := c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
				Query: "TaskQueue = '" + queue + "'", PageSize: 1000, NextPageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range resp.GetExecutions() {
				runs = append(runs, run{e.GetType().GetName(), e.GetExecution().GetWorkflowId(), e.GetExecution().GetRunId()})
				got[e.GetType().GetName()]++
				if e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
					open++
				}
			}
			if token = resp.GetNextPageToken(); len(token) == 0 {
				break
			}
		}
		done := open == 0
		for typ, n := range want {
			done = done && got[typ] >= n
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workflows on %s: %v with %d open; want at least %v, all closed", queue, got, open, want)
		}
		time.Sleep(500 * time.Millisecond)
	}

	check := func(where, text string) {
		t.Helper()
		if found := sc.scan(text); len(found) > 0 {
			t.Errorf("%s holds %s", where, strings.Join(found, ", "))
		}
	}
	events := 0
	for _, r := range runs {
		h, _ := runHistory(t, c, r.id, r.runID)
		events += len(h.Events)
		check(fmt.Sprintf("the history of %s %s (run %s)", r.typ, r.id, r.runID), historyText(t, h))
	}
	desc, err := c.ScheduleClient().GetHandle(context.Background(), "sec-weekly").Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if action, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction); ok {
		raw, _ := json.Marshal(action.Args)
		check("the schedule's action", string(raw))
	} else {
		t.Errorf("schedule action is a %T", desc.Schedule.Action)
	}
	check("the worker's log", w.output())
	for i, p := range devProcs {
		check(devices[i]+"'s log", p.output())
	}
	check("localhub's log", env.localhub.output())
	check("the starter's output", strings.Join(outputs, "\n"))
	res, err := http.Get(metricsURL(t, w))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(metrics), "dmflow_device_operations_total") {
		t.Errorf("metrics lack dmflow's: %.300s", metrics)
	}
	check("the worker's metrics", string(metrics))
	t.Logf("scanned %d runs (%d events), the schedule, %d logs and the metrics for %d secrets", len(runs), events, len(devProcs)+2, len(sc.literals))
}
