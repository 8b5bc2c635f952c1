package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
)

// clusterEnvFile holds what the compose stack and `make up-cluster` share.
const clusterEnvFile = "deploy/cluster.env"

// clusterEnvLineRE is the one line shape both readers of the file agree on:
// Compose's dotenv parser and scripts/stack.sh (load_cluster_env, which
// strips one pair of double quotes) or sh's `.`. No $, backquote, backslash
// or single quote, so neither expands anything.
var clusterEnvLineRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=("[^"$` + "`" + `\\']*"|[^ "$` + "`" + `\\']*)$`)

// readClusterEnv reads deploy/cluster.env as Compose does, after checking
// every line has the shape both readers agree on.
func readClusterEnv(t *testing.T) map[string]string {
	t.Helper()
	path := filepath.Join(repoRoot, clusterEnvFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !clusterEnvLineRE.MatchString(line) {
			t.Errorf("%s:%d: %q: write KEY=value, or KEY=\"value with spaces\", without $, quotes inside, backquotes or backslashes (Compose and sh must read it alike)", clusterEnvFile, i+1, line)
		}
	}
	vars, err := dotenv.Read(path)
	if err != nil {
		t.Fatalf("%s: %v", clusterEnvFile, err)
	}
	return vars
}

// clusterFacts are the shared values the checks use, with their types.
type clusterFacts struct {
	vars                         map[string]string
	serverVersion, uiVersion     string
	namespace, retention         string
	attrs                        map[string]string
	shards, maxConns, visConns   int
	postgresMaxConnections       int
	temporalPort, uiPort         uint32
	mqttPort, httpsPort, metrics uint32
}

func parseClusterFacts(vars map[string]string) (clusterFacts, []error) {
	var errs []error
	c := clusterFacts{vars: vars, attrs: map[string]string{}}
	str := func(k string) string {
		v := vars[k]
		if v == "" {
			errs = append(errs, fmt.Errorf("%s: %s is missing", clusterEnvFile, k))
		}
		return v
	}
	num := func(k string) int {
		n, err := strconv.Atoi(str(k))
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s: %s=%q is not a positive number", clusterEnvFile, k, vars[k]))
		}
		return n
	}
	port := func(k string) uint32 {
		n := num(k)
		if n > 65535 {
			errs = append(errs, fmt.Errorf("%s: %s=%d is not a port", clusterEnvFile, k, n))
		}
		return uint32(n)
	}
	c.serverVersion, c.uiVersion = str("TEMPORAL_SERVER_VERSION"), str("TEMPORAL_UI_VERSION")
	c.namespace, c.retention = str("TEMPORAL_NAMESPACE"), str("DMFLOW_NAMESPACE_RETENTION")
	for _, item := range strings.Fields(str("DMFLOW_SEARCH_ATTRIBUTES")) {
		k, v, _ := strings.Cut(item, "=")
		c.attrs[k] = v
	}
	c.shards = num("NUM_HISTORY_SHARDS")
	c.maxConns, c.visConns = num("SQL_MAX_CONNS"), num("SQL_VIS_MAX_CONNS")
	num("SQL_MAX_IDLE_CONNS")
	num("SQL_VIS_MAX_IDLE_CONNS")
	c.postgresMaxConnections = num("POSTGRES_MAX_CONNECTIONS")
	c.temporalPort, c.uiPort = port("DMFLOW_TEMPORAL_PORT"), port("DMFLOW_TEMPORAL_UI_PORT")
	c.mqttPort, c.httpsPort, c.metrics = port("DMFLOW_MQTT_PORT"), port("DMFLOW_HTTPS_PORT"), port("DMFLOW_METRICS_PORT")
	return c, errs
}

// temporalServices is how many services one Temporal server process runs
// (frontend, history, matching, worker), each with its own pools.
const temporalServices = 4

// postgresReserve is what PostgreSQL keeps beside the server's pools: its
// superuser_reserved_connections (3) and room for the schema tool and psql.
const postgresReserve = 10

// checkClusterFacts checks the shared values against the workflows, the
// server module pins and each other.
func checkClusterFacts(c clusterFacts, attrs map[string]string, goMod string) []error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(clusterEnvFile+": "+format, a...)) }
	for k, v := range attrs {
		if c.attrs[k] != v {
			fail("DMFLOW_SEARCH_ATTRIBUTES does not register %s as %s (the workflows set it; it has %q)", k, v, c.attrs[k])
		}
	}
	for k := range c.attrs {
		if _, ok := attrs[k]; !ok {
			fail("DMFLOW_SEARCH_ATTRIBUTES registers %s, which no workflow sets", k)
		}
	}
	if need := temporalServices*(c.maxConns+c.visConns) + postgresReserve; c.postgresMaxConnections < need {
		fail("POSTGRES_MAX_CONNECTIONS=%d, but %d services × (SQL_MAX_CONNS %d + SQL_VIS_MAX_CONNS %d) + %d reserved need %d: raise it or shrink the pools",
			c.postgresMaxConnections, temporalServices, c.maxConns, c.visConns, postgresReserve, need)
	}
	for mod, v := range map[string]string{"go.temporal.io/server": c.serverVersion, "github.com/temporalio/ui-server/v2": c.uiVersion} {
		re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(mod) + `\s+(v\S+)`)
		m := re.FindStringSubmatch(goMod)
		if m == nil {
			fail("tools/cluster/go.mod does not require %s", mod)
		} else if m[1] != "v"+v {
			fail("names %s %s, tools/cluster/go.mod builds %s: bump both together", mod, v, m[1])
		}
	}
	return errs
}

// checkComposeAgainstCluster checks the compose project against the shared
// values: images, the env_file of the Temporal services, the database's
// connections, the worker's namespace and the published ports.
func checkComposeAgainstCluster(p *types.Project, c clusterFacts) []error {
	var errs []error
	fail := func(svc, format string, a ...any) {
		errs = append(errs, fmt.Errorf("service %s: "+format+" (%s)", append(append([]any{svc}, a...), clusterEnvFile)...))
	}
	images := map[string]string{
		svcSchema:   "temporalio/admin-tools:" + c.serverVersion,
		svcTemporal: "temporalio/server:" + c.serverVersion,
		svcSetup:    "temporalio/admin-tools:" + c.serverVersion,
		svcUI:       "temporalio/ui:" + c.uiVersion,
	}
	for svc, want := range images {
		if s, ok := p.Services[svc]; ok && s.Image != want {
			fail(svc, "image %s, want %s", s.Image, want)
		}
	}
	for _, svc := range []string{svcTemporal, svcSetup} {
		s, ok := p.Services[svc]
		if !ok {
			continue
		}
		for k, v := range c.vars {
			if got, ok := s.Environment[k]; svc == svcTemporal && strings.HasPrefix(k, "DMFLOW_") {
				continue // the server reads none of dmflow's
			} else if !ok || got == nil || *got != v {
				fail(svc, "environment %s is %v, want %q: give it env_file: %s", k, deref(got), v, clusterEnvFile)
			}
		}
	}
	if s, ok := p.Services[svcPostgres]; ok {
		want := "max_connections=" + strconv.Itoa(c.postgresMaxConnections)
		if !contains([]string(s.Command), want) {
			fail(svcPostgres, "command %q does not set %s", []string(s.Command), want)
		}
	}
	if s, ok := p.Services[svcWorker]; ok && env(s, "TEMPORAL_NAMESPACE") != c.namespace {
		fail(svcWorker, "TEMPORAL_NAMESPACE=%q, want %q", env(s, "TEMPORAL_NAMESPACE"), c.namespace)
	}
	published := map[string]uint32{svcTemporal: c.temporalPort, svcUI: c.uiPort}
	for svc, want := range published {
		if s, ok := p.Services[svc]; ok && !publishes(s, want) {
			fail(svc, "does not publish host port %d", want)
		}
	}
	if s, ok := p.Services[svcLocalhub]; ok && (!publishes(s, c.mqttPort) || !publishes(s, c.httpsPort)) {
		fail(svcLocalhub, "does not publish host ports %d and %d", c.mqttPort, c.httpsPort)
	}
	if s, ok := p.Services[svcWorker]; ok && !publishes(s, c.metrics) {
		fail(svcWorker, "does not publish host port %d", c.metrics)
	}
	return errs
}

func deref(p *string) any {
	if p == nil {
		return "unset"
	}
	return fmt.Sprintf("%q", *p)
}

// publishes reports whether s publishes host port port.
func publishes(s types.ServiceConfig, port uint32) bool {
	for _, p := range s.Ports {
		if p.Published == strconv.Itoa(int(port)) {
			return true
		}
	}
	return false
}

// TestClusterEnvIsTheOneSourceOfTruth: deploy/cluster.env agrees with the
// workflows, tools/cluster/go.mod and docker-compose.yml, and sh reads it as
// Compose does.
func TestClusterEnvIsTheOneSourceOfTruth(t *testing.T) {
	vars := readClusterEnv(t)
	c, errs := parseClusterFacts(vars)
	goMod, err := os.ReadFile(filepath.Join(repoRoot, "tools/cluster/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	errs = append(errs, checkClusterFacts(c, workflowSearchAttributes(t), string(goMod))...)
	p, err := loadProject(repoRoot, []string{composeFile}, baseEnv(), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	errs = append(errs, checkComposeAgainstCluster(p, c)...)
	for _, err := range errs {
		t.Error(err)
	}

	// The two shell readers: a user's `. deploy/cluster.env`, and
	// scripts/stack.sh's load_cluster_env, which `make up-cluster` runs.
	readers := map[string][]string{
		"sh .": {"sh", "-c", `. ./` + clusterEnvFile + ` && eval "printf %s \"\$$1\""`, "sh"},
		"stack.sh load_cluster_env": {"bash", "-c", `set -eu; CLUSTER_ENV=` + clusterEnvFile + `
eval "$(sed -n '/^load_cluster_env() {/,/^}/p' scripts/stack.sh)"
load_cluster_env; printf %s "${!1}"`, "bash"},
	}
	for name, argv := range readers {
		for k, want := range vars {
			cmd := exec.Command(argv[0], append(argv[1:], k)...)
			cmd.Dir, cmd.Env = repoRoot, []string{"PATH=" + os.Getenv("PATH")}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s %s: %v", name, clusterEnvFile, err)
			}
			if string(out) != want {
				t.Errorf("%s reads %s=%q, Compose %q", name, k, out, want)
			}
		}
	}
}

// TestClusterChecksCatch: each check above fails on the drift it is for.
func TestClusterChecksCatch(t *testing.T) {
	vars := readClusterEnv(t)
	goMod, err := os.ReadFile(filepath.Join(repoRoot, "tools/cluster/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	attrs := workflowSearchAttributes(t)
	for _, tc := range []struct {
		name    string
		vars    map[string]string
		compose func(p *types.Project)
		want    string
	}{
		{"server bumped alone", map[string]string{"TEMPORAL_SERVER_VERSION": "1.33.0"}, nil, "bump both together"},
		{"UI bumped alone", map[string]string{"TEMPORAL_UI_VERSION": "2.56.0"}, nil, "ui-server/v2 2.56.0"},
		{"pools over the database", map[string]string{"SQL_MAX_CONNS": "40"}, nil, "raise it or shrink the pools"},
		{"search attribute left out", map[string]string{"DMFLOW_SEARCH_ATTRIBUTES": "DmflowDevice=Keyword"}, nil, "does not register DmflowRollout as Keyword"},
		{"shards not a number", map[string]string{"NUM_HISTORY_SHARDS": "many"}, nil, "NUM_HISTORY_SHARDS"},
		{"compose server image", nil, func(p *types.Project) {
			s := p.Services[svcTemporal]
			s.Image = "temporalio/server:1.31.0"
			p.Services[svcTemporal] = s
		}, "want temporalio/server:"},
		{"setup job without the env_file", nil, func(p *types.Project) {
			s := p.Services[svcSetup]
			delete(s.Environment, "DMFLOW_NAMESPACE_RETENTION")
			p.Services[svcSetup] = s
		}, "give it env_file"},
		{"database connections left at the default", nil, func(p *types.Project) {
			s := p.Services[svcPostgres]
			s.Command = nil
			p.Services[svcPostgres] = s
		}, "max_connections="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := map[string]string{}
			for k, x := range vars {
				v[k] = x
			}
			for k, x := range tc.vars {
				v[k] = x
			}
			c, errs := parseClusterFacts(v)
			errs = append(errs, checkClusterFacts(c, attrs, string(goMod))...)
			if tc.compose != nil {
				p, err := loadProject(repoRoot, []string{composeFile}, baseEnv(), nil, true)
				if err != nil {
					t.Fatal(err)
				}
				tc.compose(p)
				errs = append(errs, checkComposeAgainstCluster(p, c)...)
			}
			var all []string
			for _, err := range errs {
				all = append(all, err.Error())
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.want) {
				t.Errorf("errors %q, want one with %q", all, tc.want)
			}
		})
	}
}
