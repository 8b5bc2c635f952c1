// Package temporalconn connects dmflow's commands to Temporal: client options
// come from the standard Temporal environment configuration (TEMPORAL_ADDRESS,
// TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*, TEMPORAL_PROFILE and the
// TOML profile file), so a dev server, a self-hosted cluster and Temporal
// Cloud differ by configuration alone; flags override single fields.
package temporalconn

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	tlog "go.temporal.io/sdk/log"
)

// DefaultUIURL is the Web UI of the local dev server (`make up`).
const DefaultUIURL = "http://localhost:8233"

// Config holds the flag overrides. Empty fields keep what the environment
// configuration says.
type Config struct {
	Address   string // host:port of the frontend; default localhost:7233
	Namespace string // default "default"
	UIURL     string // base URL of the Temporal Web UI, for links
	// MetricsHandler receives the SDK's metrics (the worker passes its Prometheus registry's);
	// nil keeps the SDK's default, which drops them.
	MetricsHandler client.MetricsHandler
	// Env replaces the process environment (tests); nil reads the real one.
	Env envconfig.EnvLookup
	// Identity names the client to Temporal (client.Options.Identity: the history records it with
	// every request, an update's too); empty keeps the SDK's default, pid@host@.
	Identity string
}

// DefaultIdentity is the identity a command names itself with when told none: pid@host, as the
// SDK's default without its trailing task queue.
func DefaultIdentity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return fmt.Sprintf("%d@%s", os.Getpid(), host)
}

// ClientOptions resolves the client options: profile file, then
// environment, then flags.
func (c Config) ClientOptions(logger *slog.Logger) (client.Options, error) {
	opts, err := envconfig.LoadClientOptions(envconfig.LoadClientOptionsRequest{EnvLookup: c.Env})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client configuration: %w: check TEMPORAL_* variables and the profile file (TEMPORAL_CONFIG_FILE)", err)
	}
	if c.Address != "" {
		opts.HostPort = c.Address
	}
	if c.Namespace != "" {
		opts.Namespace = c.Namespace
	}
	if opts.HostPort == "" {
		opts.HostPort = client.DefaultHostPort
	}
	if opts.Namespace == "" {
		opts.Namespace = client.DefaultNamespace
	}
	if logger != nil {
		opts.Logger = tlog.NewStructuredLogger(logger)
	}
	if c.MetricsHandler != nil {
		opts.MetricsHandler = c.MetricsHandler
	}
	if c.Identity != "" {
		opts.Identity = c.Identity
	}
	return opts, nil
}

// Dial connects and checks the server answers, so a wrong address fails
// here with a line that names the fix rather than at the first call.
func (c Config) Dial(ctx context.Context, logger *slog.Logger) (client.Client, error) {
	opts, err := c.ClientOptions(logger)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cl, err := client.DialContext(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot reach Temporal at %s (namespace %s): %v: start the local stack with `make up`, or point TEMPORAL_ADDRESS (or --temporal-address) at your cluster", opts.HostPort, opts.Namespace, err)
	}
	return cl, nil
}

// WorkflowURL links a workflow run's history in the Temporal Web UI; with
// no runID, the workflow ID alone (the UI shows its latest run).
func WorkflowURL(uiBase, namespace, workflowID, runID string) string {
	if uiBase == "" {
		uiBase = DefaultUIURL
	}
	u := strings.TrimRight(uiBase, "/") + "/namespaces/" + url.PathEscape(namespace) +
		"/workflows/" + url.PathEscape(workflowID)
	if runID != "" {
		u += "/" + url.PathEscape(runID) + "/history"
	}
	return u
}

// ScheduleURL links a schedule in the Temporal Web UI's Schedules page.
func ScheduleURL(uiBase, namespace, scheduleID string) string {
	if uiBase == "" {
		uiBase = DefaultUIURL
	}
	return strings.TrimRight(uiBase, "/") + "/namespaces/" + url.PathEscape(namespace) + "/schedules/" + url.PathEscape(scheduleID)
}
