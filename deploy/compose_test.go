package deploy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.temporal.io/sdk/client"

	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/sim/hub"
)

// The compose files, relative to the repository root (the project directory).
const (
	composeFile      = "docker-compose.yml"
	azureOverride    = "deploy/compose.azure-iot-hub.yml"
	temporalOverride = "deploy/compose.temporal-cloud.yml"
)

// Service names the documentation, the overrides and these checks refer to.
const (
	svcPostgres = "postgresql"
	svcSchema   = "temporal-schema"
	svcTemporal = "temporal"
	svcSetup    = "temporal-setup"
	svcUI       = "temporal-ui"
	svcLocalhub = "localhub"
	svcWorker   = "worker"
	svcFleet    = "fleet"
)

// temporalUIPort is where temporalio/ui serves (its TEMPORAL_UI_PORT
// default); no Go code of ours names it.
const temporalUIPort = 8080

// caFileName is localhub's CA certificate in its state directory
// (internal/sim/hub/tls.go caCertFile, printed on its ready line).
const caFileName = "ca.pem"

// facts is what a compose project is checked against.
type facts struct {
	commands   []string            // the commands the image holds (Makefile CMDS)
	dockerfile dockerfileFacts     // the image's default command and environment
	reads      map[string]envReads // command -> variables it reads
	attrs      map[string]string   // search attributes the workflows set
	env        map[string]string   // the environment the files were loaded with
}

func gatherFacts(t *testing.T, env map[string]string) facts {
	t.Helper()
	f := facts{
		commands:   makefileCommands(t),
		dockerfile: dockerfile(t),
		reads:      map[string]envReads{},
		attrs:      workflowSearchAttributes(t),
		env:        env,
	}
	for _, c := range f.commands {
		f.reads[c] = commandEnv(t, c)
	}
	return f
}

// secretKeyRE matches variable names whose values are credentials.
var secretKeyRE = regexp.MustCompile(`PASSWORD|PWD|SECRET|TOKEN|API_KEY|KEY_DATA|CONNECTION_STRING`)

// loadProject loads compose files (relative to dir) the way `docker compose`
// does, with env as the only environment (no .env, no process environment,
// so the test sees exactly what it passes).
func loadProject(dir string, files []string, env map[string]string, profiles []string, interpolate bool) (*types.Project, error) {
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(dir, f)
	}
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	opts, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(dir),
		cli.WithEnv(kv),
		cli.WithProfiles(profiles),
		cli.WithInterpolation(interpolate),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// command returns the dmflow command a service of the dmflow image runs:
// the image's default, the command line's first word, or the program a
// `sh -c` script ends by exec'ing.
func (f facts) command(s types.ServiceConfig) string {
	argv := []string(s.Command)
	if len(argv) == 0 {
		return f.dockerfile.defaultCommand
	}
	if (path.Base(argv[0]) == "sh" || path.Base(argv[0]) == "bash") && len(argv) >= 3 {
		if m := regexp.MustCompile(`(?m)^\s*exec\s+(\S+)`).FindAllStringSubmatch(argv[len(argv)-1], -1); m != nil {
			return path.Base(m[len(m)-1][1])
		}
		return ""
	}
	return path.Base(argv[0])
}

// isDmflow reports whether the service runs dmflow's own image.
func isDmflow(s types.ServiceConfig) bool { return s.Build != nil }

func env(s types.ServiceConfig, key string) string {
	if v, ok := s.Environment[key]; ok && v != nil {
		return *v
	}
	return ""
}

// listenPorts returns the container ports the service listens on, port to
// what it serves.
func (f facts) listenPorts(s types.ServiceConfig) map[uint32]string {
	ports := map[uint32]string{}
	add := func(addr, what string) {
		_, p, err := net.SplitHostPort(addr)
		if n, err2 := strconv.ParseUint(p, 10, 16); err == nil && err2 == nil {
			ports[uint32(n)] = what
		}
	}
	repo, _, _ := splitImage(s.Image)
	switch {
	case isDmflow(s) && f.command(s) == "localhub":
		mqtt, https := hub.DefaultMQTTAddr, hub.DefaultHTTPSAddr
		if v := env(s, hub.EnvMQTTAddr); v != "" {
			mqtt = v
		}
		if v := env(s, hub.EnvHTTPSAddr); v != "" {
			https = v
		}
		add(mqtt, "mqtt")
		add(https, "https")
	case isDmflow(s) && f.command(s) == "worker":
		// The worker listens only when given a metrics address.
		if v := env(s, settings.MetricsAddress); v != "" {
			add(v, "metrics")
		}
	case repo == "temporalio/server":
		add(client.DefaultHostPort, "grpc")
		if v := env(s, "FRONTEND_GRPC_PORT"); v != "" {
			ports = map[uint32]string{}
			add(":"+v, "grpc")
		}
	case repo == "temporalio/ui":
		add(":"+strconv.Itoa(temporalUIPort), "http")
		if v := env(s, "TEMPORAL_UI_PORT"); v != "" {
			ports = map[uint32]string{}
			add(":"+v, "http")
		}
	}
	return ports
}

// checkProject checks a loaded project; required are the services it must
// run. Each error names the service and what to fix.
func checkProject(p *types.Project, f facts, required []string) []error {
	var errs []error
	fail := func(svc, format string, a ...any) {
		errs = append(errs, fmt.Errorf("service %s: "+format, append([]any{svc}, a...)...))
	}
	secrets := map[string]bool{}
	for k, v := range f.env {
		if secretKeyRE.MatchString(k) && v != "" {
			secrets[v] = true
		}
	}

	for _, name := range required {
		if _, ok := p.Services[name]; !ok {
			errs = append(errs, fmt.Errorf("missing service %s", name))
		}
	}
	for _, name := range p.DisabledServiceNames() {
		if why := pinned(p.DisabledServices[name].Image); why != "" {
			fail(name, "image %q has %s: pin an explicit tag or digest", p.DisabledServices[name].Image, why)
		}
	}

	names := p.ServiceNames()
	for _, name := range names {
		s := p.Services[name]
		if why := pinned(s.Image); why != "" {
			fail(name, "image %q has %s: pin an explicit tag or digest", s.Image, why)
		}

		// Environment: only what the command reads; no secret from the file.
		if isDmflow(s) {
			cmd := f.command(s)
			if !contains(f.commands, cmd) {
				fail(name, "runs %q, which is none of the image's commands %v", cmd, f.commands)
			} else {
				for k := range s.Environment {
					if !f.reads[cmd][k] {
						fail(name, "sets %s, which %s does not read", k, cmd)
					}
				}
			}
			if u, _, _ := strings.Cut(s.User, ":"); u == "root" || u == "0" {
				fail(name, "runs as user %s: leave the image's unprivileged user", s.User)
			}
			if s.Privileged {
				fail(name, "is privileged")
			}
		}
		for k, v := range s.Environment {
			if v == nil || *v == "" || secrets[*v] {
				continue
			}
			if secretKeyRE.MatchString(k) || strings.Contains(*v, "SharedAccessKey=") {
				fail(name, "%s has a value written in the compose file: take it from the environment (${%s} in .env)", k, k)
			}
		}

		// Ports: only what the service listens on, on the loopback unless told.
		listen := f.listenPorts(s)
		published := map[uint32]bool{}
		for _, pc := range s.Ports {
			published[pc.Target] = true
			if _, ok := listen[pc.Target]; !ok {
				fail(name, "publishes container port %d, but it does not listen there (it listens on %s)", pc.Target, describePorts(listen))
			}
			if f.env["DMFLOW_PUBLISH_IP"] == "" && pc.HostIP != "127.0.0.1" {
				fail(name, "publishes port %d on all interfaces (host_ip %q): publish on ${DMFLOW_PUBLISH_IP:-127.0.0.1}", pc.Target, pc.HostIP)
			}
		}
		for port, what := range listen {
			if !published[port] {
				fail(name, "does not publish its %s port %d", what, port)
			}
		}
		// A metrics address on the container's loopback is one no published port and no
		// Prometheus on the network reaches.
		if v := env(s, settings.MetricsAddress); isDmflow(s) && v != "" {
			if host, _, err := net.SplitHostPort(v); err == nil && (host == "localhost" || net.ParseIP(host).IsLoopback()) {
				fail(name, "%s=%q listens on the container's loopback, which neither the published port nor Prometheus reaches: use \":%s\"", settings.MetricsAddress, v, strings.TrimPrefix(v, host+":"))
			}
		}

		// Dependencies: a health condition needs a health check; a
		// completion condition a one-shot.
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				continue // disabled and not required: the loader allowed it
			}
			switch d.Condition {
			case types.ServiceConditionHealthy:
				if target.HealthCheck == nil || target.HealthCheck.Disable || len(target.HealthCheck.Test) == 0 {
					fail(name, "waits for %s to be healthy, but %s has no healthcheck", dep, dep)
				}
			case types.ServiceConditionCompletedSuccessfully:
				if target.Restart == types.RestartPolicyAlways || target.Restart == types.RestartPolicyUnlessStopped {
					fail(name, "waits for %s to complete, but %s restarts (restart: %s)", dep, dep, target.Restart)
				}
			}
		}

		// Addresses that name another service must name a port it serves.
		checkAddr := func(key, value, hostPort, want string) {
			host, port, err := net.SplitHostPort(hostPort)
			if err != nil {
				fail(name, "%s=%q names no host:port", key, value)
				return
			}
			other, ok := p.Services[host]
			if !ok {
				return // outside this project (Temporal Cloud, Azure)
			}
			n, _ := strconv.ParseUint(port, 10, 16)
			if what, ok := f.listenPorts(other)[uint32(n)]; !ok || (want != "" && what != want) {
				fail(name, "%s=%q, but %s serves %s on %s", key, value, host, want, describePorts(f.listenPorts(other)))
			}
		}
		if v := env(s, "TEMPORAL_ADDRESS"); v != "" {
			checkAddr("TEMPORAL_ADDRESS", v, v, "grpc")
		}
		if v := env(s, "DMFLOW_MQTT_BROKER"); v != "" {
			if u, err := url.Parse(v); err != nil || u.Host == "" {
				fail(name, "DMFLOW_MQTT_BROKER=%q is not a URL", v)
			} else {
				checkAddr("DMFLOW_MQTT_BROKER", v, u.Host, "mqtt")
			}
		}

		// localhub must call itself what the others reach it by.
		if isDmflow(s) && f.command(s) == "localhub" {
			if h := env(s, hub.EnvHost); h != name && !contains(networkAliases(s), h) {
				fail(name, "%s=%q: the connection strings it hands out would not resolve in the other containers; set it to %q", hub.EnvHost, h, name)
			}
		}

		// A CA file must come read-only from the localhub state volume.
		if ca := env(s, "DMFLOW_HUB_CA_FILE"); ca != "" {
			checkCAFile(p, f, name, s, ca, fail)
		}
	}

	// The search attributes the setup job registers are the workflows'.
	if s, ok := p.Services[svcSetup]; ok {
		got := map[string]string{}
		for _, item := range strings.Fields(env(s, "DMFLOW_SEARCH_ATTRIBUTES")) {
			k, v, _ := strings.Cut(item, "=")
			got[k] = v
		}
		for k, v := range f.attrs {
			if got[k] != v {
				fail(svcSetup, "does not register search attribute %s as %s (DMFLOW_SEARCH_ATTRIBUTES has %q)", k, v, got[k])
			}
		}
		for k := range got {
			if _, ok := f.attrs[k]; !ok {
				fail(svcSetup, "registers search attribute %s, which no workflow sets", k)
			}
		}
	}

	// The worker starts once what it needs is there.
	if w, ok := p.Services[svcWorker]; ok {
		if _, ok := p.Services[svcSetup]; ok && w.DependsOn[svcSetup].Condition != types.ServiceConditionCompletedSuccessfully {
			fail(svcWorker, "does not wait for %s to complete: workflows would fail on unregistered search attributes", svcSetup)
		}
		if _, ok := p.Services[svcLocalhub]; ok && env(w, "DMFLOW_HUB_CA_FILE") != "" && w.DependsOn[svcLocalhub].Condition != types.ServiceConditionHealthy {
			fail(svcWorker, "does not wait for %s to be healthy", svcLocalhub)
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs
}

// describePorts lists ports as "8443 (https), 8883 (mqtt)".
func describePorts(ports map[uint32]string) string {
	var list []string
	for p, what := range ports {
		list = append(list, fmt.Sprintf("%d (%s)", p, what))
	}
	sort.Strings(list)
	if len(list) == 0 {
		return "no port"
	}
	return strings.Join(list, ", ")
}

func networkAliases(s types.ServiceConfig) []string {
	var aliases []string
	for _, n := range s.Networks {
		if n != nil {
			aliases = append(aliases, n.Aliases...)
		}
	}
	return aliases
}

// checkCAFile checks that a service's DMFLOW_HUB_CA_FILE is localhub's CA,
// mounted read-only from the volume localhub keeps its state in.
func checkCAFile(p *types.Project, f facts, name string, s types.ServiceConfig, ca string, fail func(string, string, ...any)) {
	var mount *types.ServiceVolumeConfig
	for i, v := range s.Volumes {
		if rel, err := filepath.Rel(v.Target, ca); err == nil && !strings.HasPrefix(rel, "..") {
			mount = &s.Volumes[i]
		}
	}
	if mount == nil {
		fail(name, "DMFLOW_HUB_CA_FILE=%s is on no volume: mount localhub's state volume", ca)
		return
	}
	if !mount.ReadOnly {
		fail(name, "mounts %s at %s writable: mount localhub's state read-only (:ro)", mount.Source, mount.Target)
	}
	if rel, _ := filepath.Rel(mount.Target, ca); rel != caFileName {
		fail(name, "DMFLOW_HUB_CA_FILE=%s is not %s at the root of the mounted state directory", ca, caFileName)
	}
	lh, ok := p.Services[svcLocalhub]
	if !ok {
		fail(name, "reads localhub's CA, but the project runs no localhub")
		return
	}
	stateDir := env(lh, hub.EnvStateDir)
	if stateDir == "" {
		stateDir = f.dockerfile.runtimeEnv[hub.EnvStateDir]
	}
	for _, v := range lh.Volumes {
		if v.Source == mount.Source && v.Target == stateDir && !v.ReadOnly {
			return
		}
	}
	fail(name, "mounts volume %q for the CA, but localhub keeps its state (%s) elsewhere", mount.Source, stateDir)
}

// scenario is one way the files are used.
type scenario struct {
	name     string
	files    []string
	env      map[string]string
	profiles []string
	enabled  []string // exactly the services that run
	check    func(t *testing.T, p *types.Project)
}

// baseEnv is what a user puts in .env for the local stack; the values are
// stand-ins, recognisable as coming from the environment.
func baseEnv() map[string]string {
	return map[string]string{"POSTGRES_PASSWORD": "from-env-postgres-password"}
}

func withEnv(extra ...string) map[string]string {
	env := baseEnv()
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// azureConnectionString stands in for a real hub's string, with a key made at run time.
var azureConnectionString = "HostName=dmflow-test.azure-devices.net;SharedAccessKeyName=dmflow-worker;SharedAccessKey=" +
	base64.StdEncoding.EncodeToString([]byte(rand.Text()))

func scenarios() []scenario {
	local := []string{svcPostgres, svcSchema, svcTemporal, svcSetup, svcUI, svcLocalhub, svcWorker}
	return []scenario{
		{
			name:    "local stack",
			files:   []string{composeFile},
			env:     baseEnv(),
			enabled: local,
			check: func(t *testing.T, p *types.Project) {
				if _, err := p.GetService(svcFleet); err == nil {
					t.Errorf("the fleet runs without its profile")
				}
			},
		},
		{
			name:     "local stack with the fleet",
			files:    []string{composeFile},
			env:      withEnv("DMFLOW_FLEET_COUNT", "1000", "DMFLOW_LOCALHUB_TIER", "S3"),
			profiles: []string{"fleet"},
			enabled:  append(append([]string{}, local...), svcFleet),
			check: func(t *testing.T, p *types.Project) {
				if got := env(p.Services[svcFleet], "DMFLOW_FLEET_COUNT"); got != "1000" {
					t.Errorf("DMFLOW_FLEET_COUNT from the environment: fleet has %q", got)
				}
			},
		},
		{
			name:     "published on another address",
			files:    []string{composeFile},
			env:      withEnv("DMFLOW_PUBLISH_IP", "0.0.0.0"),
			profiles: []string{"fleet"},
			enabled:  append(append([]string{}, local...), svcFleet),
		},
		{
			name:     "Azure IoT Hub",
			files:    []string{composeFile, azureOverride},
			env:      withEnv("IOTHUB_CONNECTION_STRING", azureConnectionString),
			profiles: []string{"fleet"},
			enabled:  []string{svcPostgres, svcSchema, svcTemporal, svcSetup, svcUI, svcWorker, svcFleet},
			check: func(t *testing.T, p *types.Project) {
				w := p.Services[svcWorker]
				if env(w, "IOTHUB_CONNECTION_STRING") != azureConnectionString || env(w, "DMFLOW_HUB_CA_FILE") != "" {
					t.Errorf("worker environment %v", w.Environment)
				}
				if len(w.Volumes) != 0 || len(w.Command) != 1 {
					t.Errorf("worker still mounts %v / runs %q", w.Volumes, w.Command)
				}
				if env(p.Services[svcFleet], "IOTHUB_CONNECTION_STRING") != azureConnectionString {
					t.Errorf("the fleet does not default to the worker's connection string")
				}
			},
		},
		{
			name:    "Temporal Cloud",
			files:   []string{composeFile, temporalOverride},
			env:     withEnv("TEMPORAL_ADDRESS", "dmflow.a1b2c.tmprl.cloud:7233", "TEMPORAL_NAMESPACE", "dmflow.a1b2c", "TEMPORAL_API_KEY", "from-env-api-key"),
			enabled: []string{svcLocalhub, svcWorker},
			check: func(t *testing.T, p *types.Project) {
				w := p.Services[svcWorker]
				if env(w, "TEMPORAL_ADDRESS") != "dmflow.a1b2c.tmprl.cloud:7233" || env(w, "TEMPORAL_API_KEY") != "from-env-api-key" {
					t.Errorf("worker environment %v", w.Environment)
				}
				// Unset optional variables stay unset: an empty
				// TEMPORAL_TLS_* would turn TLS on in envconfig.
				if v, ok := w.Environment["TEMPORAL_TLS_CLIENT_CERT_DATA"]; !ok || v != nil {
					t.Errorf("TEMPORAL_TLS_CLIENT_CERT_DATA = %v, want passed through unset", v)
				}
			},
		},
		{
			name:  "Azure IoT Hub and Temporal Cloud",
			files: []string{composeFile, azureOverride, temporalOverride},
			env: withEnv("IOTHUB_CONNECTION_STRING", azureConnectionString,
				"TEMPORAL_ADDRESS", "dmflow.a1b2c.tmprl.cloud:7233", "TEMPORAL_NAMESPACE", "dmflow.a1b2c",
				"TEMPORAL_TLS_CLIENT_CERT_DATA", "from-env-cert", "TEMPORAL_TLS_CLIENT_KEY_DATA", "from-env-key"),
			enabled: []string{svcWorker},
			check: func(t *testing.T, p *types.Project) {
				w := p.Services[svcWorker]
				if v := w.Environment["TEMPORAL_API_KEY"]; v != nil {
					t.Errorf("TEMPORAL_API_KEY = %q, want unset", *v)
				}
				if env(w, "TEMPORAL_TLS_CLIENT_CERT_DATA") != "from-env-cert" || env(w, "IOTHUB_CONNECTION_STRING") != azureConnectionString {
					t.Errorf("worker environment %v", w.Environment)
				}
			},
		},
	}
}

func TestComposeScenarios(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			p, err := loadProject(repoRoot, sc.files, sc.env, sc.profiles, true)
			if err != nil {
				t.Fatalf("load %v: %v", sc.files, err)
			}
			got := p.ServiceNames()
			want := append([]string{}, sc.enabled...)
			sort.Strings(want)
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("services %v, want %v", got, want)
			}
			for _, err := range checkProject(p, gatherFacts(t, sc.env), sc.enabled) {
				t.Error(err)
			}
			if sc.check != nil {
				sc.check(t, p)
			}
		})
	}
}

// TestComposeRequiresItsSecrets: the files refuse to load without the
// secrets they take from the environment, naming the variable.
func TestComposeRequiresItsSecrets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		env   map[string]string
		want  string
	}{
		{"database password", []string{composeFile}, map[string]string{}, "POSTGRES_PASSWORD"},
		{"hub connection string", []string{composeFile, azureOverride}, baseEnv(), "IOTHUB_CONNECTION_STRING"},
		{"Temporal address", []string{composeFile, temporalOverride}, withEnv("TEMPORAL_NAMESPACE", "ns.acct"), "TEMPORAL_ADDRESS"},
		{"Temporal namespace", []string{composeFile, temporalOverride}, withEnv("TEMPORAL_ADDRESS", "ns.acct.tmprl.cloud:7233"), "TEMPORAL_NAMESPACE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadProject(repoRoot, tc.files, tc.env, nil, true)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("load without %s: %v", tc.want, err)
			}
		})
	}
}

// TestComposeChecksCatch writes broken variants of the local stack (with the
// fleet) to a temporary directory, as `docker compose config` would print
// them, loads each with the loader and requires the checks to name the fault.
// The unbroken round trip must pass, so each failure is the break's.
func TestComposeChecksCatch(t *testing.T) {
	env := withEnv()
	good, err := loadProject(repoRoot, []string{composeFile}, env, []string{"fleet"}, true)
	if err != nil {
		t.Fatal(err)
	}
	f := gatherFacts(t, env)
	var required []string
	for _, sc := range scenarios() {
		if sc.name == "local stack with the fleet" {
			required = sc.enabled
		}
	}
	if required == nil {
		t.Fatal("no scenario \"local stack with the fleet\"")
	}

	svc := func(t *testing.T, p *types.Project, name string) types.ServiceConfig {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("no service %s to break", name)
		}
		return s
	}
	setEnv := func(name, key, value string) func(t *testing.T, p *types.Project) {
		return func(t *testing.T, p *types.Project) {
			s := svc(t, p, name)
			s.Environment[key] = &value
			p.Services[name] = s
		}
	}
	setPort := func(name string, i int, edit func(*types.ServicePortConfig)) func(t *testing.T, p *types.Project) {
		return func(t *testing.T, p *types.Project) {
			s := svc(t, p, name)
			s.Ports = append([]types.ServicePortConfig{}, s.Ports...)
			edit(&s.Ports[i])
			p.Services[name] = s
		}
	}
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, p *types.Project)
		want   string
	}{
		{"nothing broken", func(*testing.T, *types.Project) {}, ""},
		{"image without a tag", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcPostgres)
			s.Image = "postgres"
			p.Services[svcPostgres] = s
		}, "service postgresql: image \"postgres\" has no tag"},
		{"image on latest", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcUI)
			s.Image = "temporalio/ui:latest"
			p.Services[svcUI] = s
		}, "the tag latest"},
		{"missing search-attribute setup", func(t *testing.T, p *types.Project) {
			delete(p.Services, svcSetup)
			w := svc(t, p, svcWorker)
			delete(w.DependsOn, svcSetup)
			p.Services[svcWorker] = w
		}, "missing service temporal-setup"},
		{"missing worker", func(t *testing.T, p *types.Project) { delete(p.Services, svcWorker) }, "missing service worker"},
		{"worker variable it does not read", setEnv(svcWorker, "DMFLOW_HUB_CA", "/var/lib/localhub/ca.pem"), "sets DMFLOW_HUB_CA, which worker does not read"},
		{"localhub variable misspelt", setEnv(svcLocalhub, "DMFLOW_LOCALHUB_TEIR", "S3"), "sets DMFLOW_LOCALHUB_TEIR, which localhub does not read"},
		{"fleet variable of another command", setEnv(svcFleet, "DMFLOW_LOCALHUB_TIER", "S3"), "sets DMFLOW_LOCALHUB_TIER, which simdevice does not read"},
		{"port localhub does not listen on", setPort(svcLocalhub, 0, func(pc *types.ServicePortConfig) { pc.Target = 1883 }), "publishes container port 1883"},
		{"UI on the wrong port", setPort(svcUI, 0, func(pc *types.ServicePortConfig) { pc.Target = 8088 }), "does not publish its http port 8080"},
		{"published on all interfaces", setPort(svcTemporal, 0, func(pc *types.ServicePortConfig) { pc.HostIP = "" }), "on all interfaces"},
		{"worker metrics not published", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcWorker)
			s.Ports = nil
			p.Services[svcWorker] = s
		}, "service worker: does not publish its metrics port 9464"},
		{"worker metrics on another port than published", setEnv(svcWorker, settings.MetricsAddress, ":9465"), "publishes container port 9464"},
		{"worker metrics on the container's loopback", setEnv(svcWorker, settings.MetricsAddress, "127.0.0.1:9464"), "listens on the container's loopback"},
		{"worker metrics variable misspelt", setEnv(svcWorker, "DMFLOW_METRICS_ADDR", ":9464"), "sets DMFLOW_METRICS_ADDR, which worker does not read"},
		{"worker on the wrong Temporal port", setEnv(svcWorker, "TEMPORAL_ADDRESS", "temporal:7234"), "TEMPORAL_ADDRESS=\"temporal:7234\""},
		{"fleet on localhub's HTTPS port", setEnv(svcFleet, "DMFLOW_MQTT_BROKER", "tls://localhub:8443"), "DMFLOW_MQTT_BROKER"},
		{"localhub named localhost", setEnv(svcLocalhub, hub.EnvHost, "localhost"), hub.EnvHost},
		{"search attribute left out", setEnv(svcSetup, "DMFLOW_SEARCH_ATTRIBUTES", "DmflowDevice=Keyword DmflowOperation=Keyword DmflowTargetVersion=Keyword DmflowRollout=Keyword"), "DmflowRolloutState"},
		{"search attribute of the wrong type", setEnv(svcSetup, "DMFLOW_SEARCH_ATTRIBUTES", "DmflowDevice=Text DmflowOperation=Keyword DmflowTargetVersion=Keyword DmflowRollout=Keyword DmflowRolloutState=Keyword"), "DmflowDevice as Keyword"},
		{"password in the file", setEnv(svcPostgres, "POSTGRES_PASSWORD", "hunter2"), "POSTGRES_PASSWORD has a value written in the compose file"},
		{"connection string in the file", setEnv(svcWorker, "IOTHUB_CONNECTION_STRING", "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0"), "IOTHUB_CONNECTION_STRING has a value written"},
		{"healthy condition without a healthcheck", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcLocalhub)
			s.HealthCheck = nil
			p.Services[svcLocalhub] = s
		}, "localhub has no healthcheck"},
		{"CA mounted writable", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcWorker)
			s.Volumes = append([]types.ServiceVolumeConfig{}, s.Volumes...)
			s.Volumes[0].ReadOnly = false
			p.Services[svcWorker] = s
		}, "read-only"},
		{"worker as root", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcWorker)
			s.User = "root"
			p.Services[svcWorker] = s
		}, "runs as user root"},
		{"fleet running an unknown command", func(t *testing.T, p *types.Project) {
			s := svc(t, p, svcFleet)
			s.Command = types.ShellCommand{"simulator", "fleet"}
			p.Services[svcFleet] = s
		}, "runs \"simulator\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := good.WithServicesEnabled()
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(t, p)
			raw, err := p.MarshalYAML()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), raw, 0o600); err != nil {
				t.Fatal(err)
			}
			// The values are resolved already; the scripts' $ must stay.
			broken, err := loadProject(dir, []string{"docker-compose.yml"}, nil, []string{"fleet"}, false)
			if err != nil {
				t.Fatalf("the broken file does not load: %v\n%s", err, raw)
			}
			errs := checkProject(broken, f, required)
			for _, err := range errs {
				t.Log(err)
			}
			if tc.want == "" {
				for _, err := range errs {
					t.Errorf("round trip: %v", err)
				}
				return
			}
			if !anyContains(errs, tc.want) {
				t.Errorf("errors %v, want one containing %q", errs, tc.want)
			}
		})
	}
}
