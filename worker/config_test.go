package main

import (
	"encoding/base64"
	"strings"
	"testing"

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
