package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/dmflow/dmflow/internal/temporalconn"
)

// What the deployment files must agree with, derived from the code rather
// than listed here: the environment variables each command reads, the
// search attributes the workflows set, the commands the Makefile builds.

// repoRoot is the repository, seen from this package's directory (go test
// runs tests there).
const repoRoot = ".."

const modulePath = "github.com/dmflow/dmflow"

var (
	// envNameRE matches the environment variable names dmflow's commands
	// use: Azure's IOTHUB_*, Temporal's TEMPORAL_*, dmflow's own DMFLOW_*.
	envNameRE = regexp.MustCompile(`^(DMFLOW|IOTHUB|TEMPORAL)_[A-Z0-9_]*[A-Z0-9]$`)
	// envPrefixRE matches the prefix of a family of names built at run
	// time, such as simdevice's DMFLOW_FLEET_<FLAG>.
	envPrefixRE = regexp.MustCompile(`^(DMFLOW|IOTHUB|TEMPORAL)_[A-Z0-9_]*_$`)
)

// envReads is the set of environment variables one command reads.
type envReads map[string]bool

func (r envReads) sorted() []string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// parsedPackage is a package's non-test Go files.
type parsedPackage struct {
	dir   string
	files []*ast.File
}

var (
	parseMu     sync.Mutex
	parsedCache = map[string]*parsedPackage{}
)

// parsePackage parses the non-test Go files of the package in dir, once.
func parsePackage(t *testing.T, dir string) *parsedPackage {
	t.Helper()
	parseMu.Lock()
	defer parseMu.Unlock()
	if p, ok := parsedCache[dir]; ok {
		return p
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read package %s: %v", dir, err)
	}
	p := &parsedPackage{dir: dir}
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse %s: %v", filepath.Join(dir, name), err)
		}
		p.files = append(p.files, f)
	}
	if len(p.files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	parsedCache[dir] = p
	return p
}

func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

// imports maps the names a file refers to its imports by to their paths.
func imports(f *ast.File) map[string]string {
	m := map[string]string{}
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			continue
		}
		name := path.Base(p)
		if imp.Name != nil {
			name = imp.Name.Name
		}
		m[name] = p
	}
	return m
}

// stringConsts returns the package's top-level constants whose value is a
// string literal.
func stringConsts(p *parsedPackage) map[string]string {
	consts := map[string]string{}
	for _, f := range p.files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if s, ok := stringLit(vs.Values[i]); ok {
							consts[name.Name] = s
						}
					}
				}
			}
		}
	}
	return consts
}

// tableNames returns the string "name" fields of the package's tables:
// composite literals of a slice of structs with a field called name, such as
// simdevice's fleetFlagDefs.
func tableNames(p *parsedPackage) []string {
	var names []string
	for _, f := range p.files {
		ast.Inspect(f, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			at, ok := cl.Type.(*ast.ArrayType)
			if !ok {
				return true
			}
			st, ok := at.Elt.(*ast.StructType)
			if !ok {
				return true
			}
			index := -1
			i := 0
			for _, field := range st.Fields.List {
				for _, fn := range field.Names {
					if fn.Name == "name" {
						index = i
					}
					i++
				}
			}
			if index < 0 {
				return true
			}
			for _, elt := range cl.Elts {
				row, ok := elt.(*ast.CompositeLit)
				if !ok {
					continue
				}
				for j, v := range row.Elts {
					if kv, ok := v.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "name" {
							if s, ok := stringLit(kv.Value); ok {
								names = append(names, s)
							}
						}
					} else if j == index {
						if s, ok := stringLit(v); ok {
							names = append(names, s)
						}
					}
				}
			}
			return false
		})
	}
	return names
}

var (
	commandEnvMu    sync.Mutex
	commandEnvCache = map[string]envReads{}
)

// commandEnv derives the environment variables the command in directory cmd
// (worker, localhub, simdevice, starter) reads, from its source:
//   - env-like string literals in its files (simdevice's "DMFLOW_DEVICE_ID"),
//   - constants of dmflow's packages it refers to (settings.HubCAFile,
//     hub.EnvStateDir),
//   - a prefix literal such as "DMFLOW_FLEET_" expanded with the names of the
//     package's flag table, as simdevice's fleetEnv builds them,
//   - for commands that connect to Temporal through internal/temporalconn,
//     every variable that package's client configuration looks up.
func commandEnv(t *testing.T, cmd string) envReads {
	t.Helper()
	commandEnvMu.Lock()
	defer commandEnvMu.Unlock()
	if r, ok := commandEnvCache[cmd]; ok {
		return r
	}
	pkg := parsePackage(t, filepath.Join(repoRoot, cmd))
	reads := envReads{}
	var prefixes []string
	usesTemporal := false
	for _, f := range pkg.files {
		imps := imports(f)
		for _, p := range imps {
			if p == modulePath+"/internal/temporalconn" {
				usesTemporal = true
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.BasicLit:
				if s, ok := stringLit(x); ok {
					switch {
					case envNameRE.MatchString(s):
						reads[s] = true
					case envPrefixRE.MatchString(s):
						prefixes = append(prefixes, s)
					}
				}
			case *ast.SelectorExpr:
				id, ok := x.X.(*ast.Ident)
				if !ok {
					return true
				}
				p, ok := imps[id.Name]
				if !ok || !strings.HasPrefix(p, modulePath+"/") {
					return true
				}
				dep := parsePackage(t, filepath.Join(repoRoot, strings.TrimPrefix(p, modulePath+"/")))
				if v, ok := stringConsts(dep)[x.Sel.Name]; ok && envNameRE.MatchString(v) {
					reads[v] = true
				}
			}
			return true
		})
	}
	for _, prefix := range prefixes {
		flags := tableNames(pkg)
		if len(flags) == 0 {
			t.Fatalf("%s builds environment names from the prefix %s, but no flag table was found to expand it", cmd, prefix)
		}
		for _, flag := range flags {
			reads[prefix+strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))] = true
		}
	}
	if usesTemporal {
		for name := range temporalEnv(t) {
			reads[name] = true
		}
	}
	commandEnvCache[cmd] = reads
	return reads
}

// recordingEnv is an envconfig.EnvLookup that records what is looked up.
type recordingEnv struct {
	configFile string
	seen       map[string]bool
}

func (r *recordingEnv) Environ() []string { return nil }

func (r *recordingEnv) LookupEnv(key string) (string, bool) {
	r.seen[key] = true
	if key == "TEMPORAL_CONFIG_FILE" {
		// A file that does not exist: the lookup is recorded, no real
		// profile file is read.
		return r.configFile, true
	}
	return "", false
}

// temporalEnv returns the variables dmflow's Temporal client configuration
// (temporalconn, over the SDK's envconfig) looks up, by running it against
// an environment that records the lookups.
func temporalEnv(t *testing.T) envReads {
	t.Helper()
	rec := &recordingEnv{configFile: filepath.Join(t.TempDir(), "none.toml"), seen: map[string]bool{}}
	if _, err := (temporalconn.Config{Env: rec}).ClientOptions(nil); err != nil {
		t.Fatalf("temporalconn.ClientOptions with an empty environment: %v", err)
	}
	if !rec.seen["TEMPORAL_ADDRESS"] {
		t.Fatalf("temporalconn looked up %v, not TEMPORAL_ADDRESS: has the configuration changed?", envReads(rec.seen).sorted())
	}
	return envReads(rec.seen)
}

// searchAttributeTypes maps the SDK's typed search-attribute constructors
// (temporal.NewSearchAttributeKey<Kind>) to the type names the Temporal CLI
// registers them with.
var searchAttributeTypes = map[string]string{
	"Keyword":     "Keyword",
	"KeywordList": "KeywordList",
	"String":      "Text",
	"Int64":       "Int",
	"Float64":     "Double",
	"Bool":        "Bool",
	"Time":        "Datetime",
}

// workflowSearchAttributes returns the search attributes the workflows
// package declares, name to CLI type, from its
// temporal.NewSearchAttributeKey* calls.
func workflowSearchAttributes(t *testing.T) map[string]string {
	t.Helper()
	pkg := parsePackage(t, filepath.Join(repoRoot, "workflows"))
	attrs := map[string]string{}
	for _, f := range pkg.files {
		imps := imports(f)
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !strings.HasPrefix(sel.Sel.Name, "NewSearchAttributeKey") {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || imps[id.Name] != "go.temporal.io/sdk/temporal" {
				return true
			}
			name, ok := stringLit(call.Args[0])
			if !ok {
				t.Fatalf("workflows: %s with a non-literal name: the deployment checks cannot see it", sel.Sel.Name)
			}
			kind := strings.TrimPrefix(sel.Sel.Name, "NewSearchAttributeKey")
			typ, ok := searchAttributeTypes[kind]
			if !ok {
				t.Fatalf("workflows: search attribute %s has kind %q, unknown to these checks", name, kind)
			}
			attrs[name] = typ
			return true
		})
	}
	if len(attrs) == 0 {
		t.Fatal("found no search attributes in workflows/")
	}
	return attrs
}

// makefileCommands returns the commands `make build` builds: the Makefile's
// CMDS.
func makefileCommands(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CMDS\s*:?=\s*(.+)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("Makefile has no CMDS line")
	}
	return strings.Fields(string(m[1]))
}

// goModVersions returns go.mod's go directive and its toolchain directive
// (empty when there is none).
func goModVersions(t *testing.T) (goVersion, toolchain string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	goVersion = string(m[1])
	if tm := regexp.MustCompile(`(?m)^toolchain\s+go(\S+)\s*$`).FindSubmatch(raw); tm != nil {
		toolchain = string(tm[1])
	}
	return goVersion, toolchain
}

// TestDerivedFacts guards the derivations the other tests rely on: if the
// code moved (a constant renamed, the fleet table reshaped), they would pass
// vacuously or fail for the wrong reason.
func TestDerivedFacts(t *testing.T) {
	for _, tc := range []struct {
		cmd            string
		reads, notRead []string
	}{
		{
			cmd: "worker",
			reads: []string{"IOTHUB_CONNECTION_STRING", "DMFLOW_HUB_CA_FILE", "DMFLOW_TASK_QUEUE", "DMFLOW_LOG_FORMAT", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_PROFILE",
				"DMFLOW_METRICS_ADDRESS", "DMFLOW_MAX_CONCURRENT_ACTIVITIES", "DMFLOW_MAX_CONCURRENT_WORKFLOW_TASKS", "DMFLOW_ACTIVITY_POLLERS", "DMFLOW_WORKFLOW_POLLERS", "DMFLOW_STICKY_CACHE_SIZE"},
			notRead: []string{"DMFLOW_MQTT_BROKER", "IOTHUB_DEVICE_CONNECTION_STRING", "DMFLOW_LOCALHUB_STATE_DIR", "DMFLOW_FLEET_COUNT"},
		},
		{
			cmd:     "localhub",
			reads:   []string{"DMFLOW_LOCALHUB_STATE_DIR", "DMFLOW_LOCALHUB_HOST", "DMFLOW_LOCALHUB_MQTT_ADDR", "DMFLOW_LOCALHUB_HTTPS_ADDR", "DMFLOW_LOCALHUB_TIER", "DMFLOW_LOCALHUB_NO_THROTTLE"},
			notRead: []string{"IOTHUB_CONNECTION_STRING", "TEMPORAL_ADDRESS", "DMFLOW_LOG_FORMAT"},
		},
		{
			cmd:     "simdevice",
			reads:   []string{"IOTHUB_CONNECTION_STRING", "IOTHUB_DEVICE_CONNECTION_STRING", "DMFLOW_DEVICE_ID", "DMFLOW_MQTT_BROKER", "DMFLOW_STAGE_DURATION", "DMFLOW_FLEET_COUNT", "DMFLOW_FLEET_CONNECT_CONCURRENCY", "DMFLOW_FLEET_DEVICE_LOG_LEVEL"},
			notRead: []string{"TEMPORAL_ADDRESS", "DMFLOW_TASK_QUEUE", "DMFLOW_FLEET_", "DMFLOW_LOCALHUB_TIER"},
		},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			reads := commandEnv(t, tc.cmd)
			for _, n := range tc.reads {
				if !reads[n] {
					t.Errorf("derived reads of %s lack %s: %v", tc.cmd, n, reads.sorted())
				}
			}
			for _, n := range tc.notRead {
				if reads[n] {
					t.Errorf("derived reads of %s include %s", tc.cmd, n)
				}
			}
		})
	}
	t.Run("search attributes", func(t *testing.T) {
		attrs := workflowSearchAttributes(t)
		if attrs["DmflowDevice"] != "Keyword" || attrs["DmflowRolloutState"] != "Keyword" {
			t.Errorf("workflow search attributes = %v", attrs)
		}
	})
	t.Run("commands", func(t *testing.T) {
		cmds := strings.Join(makefileCommands(t), " ")
		for _, c := range []string{"worker", "starter", "localhub", "simdevice"} {
			if !strings.Contains(cmds, c) {
				t.Errorf("Makefile CMDS %q lacks %s", cmds, c)
			}
		}
	})
}
