package main

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmflow/dmflow/internal/hubquota"
	"github.com/dmflow/dmflow/workflows"
)

// testCS is a well-formed connection string with a made-up key.
var testCS = "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=" +
	base64.StdEncoding.EncodeToString([]byte("secret-key-for-tests"))

func TestResolve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   flagValues
		env     map[string]string
		want    func(t *testing.T, c Config)
		wantErr []string
	}{
		{
			name: "defaults from env",
			env:  map[string]string{envHubConnectionString: testCS, envHubCAFile: "/state/ca.pem"},
			want: func(t *testing.T, c Config) {
				if c.Hub.HostName != "localhost:8443" || c.CAFile != "/state/ca.pem" || c.TaskQueue != workflows.TaskQueue || c.LogFormat != "text" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name:  "flags override env",
			flags: flagValues{caFile: "/flag/ca.pem", taskQueue: "q2", logFormat: "json", address: "t:7233"},
			env:   map[string]string{envHubConnectionString: testCS, envHubCAFile: "/state/ca.pem", envTaskQueue: "q1"},
			want: func(t *testing.T, c Config) {
				if c.CAFile != "/flag/ca.pem" || c.TaskQueue != "q2" || c.LogFormat != "json" || c.Temporal.Address != "t:7233" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "metrics and limits from env",
			env: map[string]string{envHubConnectionString: testCS, envMetricsAddress: ":9464",
				"DMFLOW_MAX_CONCURRENT_ACTIVITIES": "200", "DMFLOW_STICKY_CACHE_SIZE": " 5000 "},
			want: func(t *testing.T, c Config) {
				if c.MetricsAddress != ":9464" || c.Limits != (Limits{Activities: 200, StickyCacheSize: 5000}) {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "metrics and limits: flags override env",
			flags: flagValues{metricsAddress: "127.0.0.1:0", limits: map[string]*string{
				"max-concurrent-activities": ptr("50"), "max-concurrent-workflow-tasks": ptr("20"),
				"activity-pollers": ptr("4"), "workflow-pollers": ptr("3"), "sticky-cache-size": ptr("100")}},
			env: map[string]string{envHubConnectionString: testCS, envMetricsAddress: ":9464", "DMFLOW_MAX_CONCURRENT_ACTIVITIES": "200"},
			want: func(t *testing.T, c Config) {
				want := Limits{Activities: 50, WorkflowTasks: 20, ActivityPollers: 4, WorkflowPollers: 3, StickyCacheSize: 100}
				if c.MetricsAddress != "127.0.0.1:0" || c.Limits != want {
					t.Errorf("got %+v, want limits %+v", c, want)
				}
			},
		},
		{
			name:    "metrics address without a port",
			env:     map[string]string{envHubConnectionString: testCS, envMetricsAddress: "localhost"},
			wantErr: []string{envMetricsAddress, `"localhost"`, "host:port", "127.0.0.1:9464"},
		},
		{
			name:    "metrics address from the flag is named as the flag",
			flags:   flagValues{metricsAddress: "127.0.0.1:http"},
			env:     map[string]string{envHubConnectionString: testCS},
			wantErr: []string{"--metrics-address", "host:port"},
		},
		{
			name:    "limit not a number",
			env:     map[string]string{envHubConnectionString: testCS, "DMFLOW_ACTIVITY_POLLERS": "many"},
			wantErr: []string{"DMFLOW_ACTIVITY_POLLERS", `"many"`, "whole number of at least 1", "number of goroutines polling for activity tasks", "SDK's default (2) applies"},
		},
		{
			name:    "limit zero",
			env:     map[string]string{envHubConnectionString: testCS, "DMFLOW_MAX_CONCURRENT_ACTIVITIES": "0"},
			wantErr: []string{"DMFLOW_MAX_CONCURRENT_ACTIVITIES", "at least 1"},
		},
		{
			name:    "one workflow poller says why not",
			flags:   flagValues{limits: map[string]*string{"workflow-pollers": ptr("1")}},
			env:     map[string]string{envHubConnectionString: testCS},
			wantErr: []string{"--workflow-pollers", "at least 2", "sticky queue"},
		},
		{
			name:    "one workflow task slot says why not",
			env:     map[string]string{envHubConnectionString: testCS, "DMFLOW_MAX_CONCURRENT_WORKFLOW_TASKS": "1"},
			wantErr: []string{"DMFLOW_MAX_CONCURRENT_WORKFLOW_TASKS", "at least 2", "sticky queue"},
		},
		{
			name:    "missing connection string names the setting and form",
			env:     map[string]string{},
			wantErr: []string{envHubConnectionString, "HostName=", "SharedAccessKeyName="},
		},
		{
			name:    "malformed connection string",
			env:     map[string]string{envHubConnectionString: "HostName=x;SharedAccessKey=c2VjcmV0"},
			wantErr: []string{envHubConnectionString, "SharedAccessKeyName missing"},
		},
		{
			name:    "device connection string is refused",
			env:     map[string]string{envHubConnectionString: "HostName=x;DeviceId=d;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0"},
			wantErr: []string{"device connection string"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.flags.resolve(func(k string) string { return tc.env[k] })
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "c2VjcmV0") {
					t.Errorf("error %q leaks the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want(t, c)
		})
	}
}

func ptr(s string) *string { return &s }

// Every limit has a flag and an environment variable, and the flags parse into Config.
func TestLimitFlags(t *testing.T) {
	var f flagValues
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	f.register(fs)
	args := []string{"--metrics-address", ":9464"}
	for i, l := range limits {
		if !strings.HasPrefix(l.env, "DMFLOW_") || fs.Lookup(l.flag) == nil {
			t.Errorf("limit %s: env %s, flag registered %v", l.flag, l.env, fs.Lookup(l.flag) != nil)
		}
		if u := fs.Lookup(l.flag).Usage; !strings.Contains(u, l.env) || !strings.Contains(u, "default: the SDK's") {
			t.Errorf("--%s usage %q", l.flag, u)
		}
		args = append(args, "--"+l.flag, strconv.Itoa(10+i))
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := f.resolve(func(k string) string { return map[string]string{envHubConnectionString: testCS}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if want := (Limits{Activities: 10, WorkflowTasks: 11, ActivityPollers: 12, WorkflowPollers: 13, StickyCacheSize: 14}); c.Limits != want || c.MetricsAddress != ":9464" {
		t.Errorf("got %+v, want limits %+v", c, want)
	}
}

func TestResolveBudget(t *testing.T) {
	for _, tc := range []struct {
		name, tier, units, budget string
		want                      map[hubquota.Op]float64
		wantErr                   string
	}{
		{name: "S1, one unit", tier: "S1", units: "1",
			want: map[hubquota.Op]float64{hubquota.Methods: 40, hubquota.TwinReads: 100, hubquota.TwinUpdates: 50, hubquota.Queries: 20.0 / 60}},
		{name: "S3, two units", tier: "s3", units: "2",
			want: map[hubquota.Op]float64{hubquota.Methods: 12000, hubquota.TwinReads: 1000, hubquota.TwinUpdates: 500, hubquota.Queries: 2000.0 / 60}},
		{name: "overrides", tier: "S1", units: "1", budget: "methods=10/s, queries=off",
			want: map[hubquota.Op]float64{hubquota.Methods: 10, hubquota.TwinReads: 100, hubquota.TwinUpdates: 50}},
		{name: "off", tier: "S1", units: "1", budget: "OFF"},
		{name: "bad units", tier: "S1", units: "two", wantErr: `DMFLOW_HUB_UNITS (--hub-units) "two" is not a number of units`},
		{name: "bad tier", tier: "S9", units: "1", wantErr: `DMFLOW_HUB_TIER (--hub-tier): tier "S9" is not known`},
		{name: "an operation not called", tier: "S1", units: "1", budget: "registry=5/s", wantErr: "registry is not an operation dmflow calls the hub with"},
		{name: "bad override", tier: "S1", units: "1", budget: "methods=fast", wantErr: "DMFLOW_HUB_BUDGET (--hub-budget): quota \"methods=fast\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveBudget(tc.tier, tc.units, tc.budget)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Len(t, got, len(tc.want))
			for op, r := range tc.want {
				assert.InDelta(t, r, got[op], 1e-9, "%s", op)
			}
		})
	}
}
