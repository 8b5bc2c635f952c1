package deploy

import (
	"encoding/json"
	"fmt"
	"go/version"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, USER, ...
	args string
}

// stage is one FROM and the instructions after it.
type stage struct {
	image, name string
	from        instruction
	body        []instruction
}

// parseDockerfile splits a Dockerfile into stages. It knows enough of the
// syntax for these checks: comments, line continuations, FROM [--flag]
// image [AS name]; heredocs are not used here.
func parseDockerfile(src string) ([]stage, error) {
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			if len(f) == 0 {
				return fmt.Errorf("line %d: FROM without an image", in.line)
			}
			st := stage{image: f[0], from: in}
			if len(f) >= 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			return nil
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return nil // a global ARG before the first FROM
			}
			return fmt.Errorf("line %d: %s before the first FROM", in.line, in.cmd)
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
		return nil
	}
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 {
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			start = i + 1
		} else if strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return stages, nil
}

// imageRepo and imageTag split an image reference; the tag is empty when
// there is none. A registry port (localhost:5000/x) is not a tag.
func splitImage(ref string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

// pinned reports why ref is not pinned to an explicit tag or digest, or "".
func pinned(ref string) string {
	repo, tag, digest := splitImage(ref)
	switch {
	case ref == "":
		return "no image"
	case strings.Contains(ref, "$"):
		return "an unresolved variable"
	case digest != "":
		if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(digest) {
			return "a malformed digest"
		}
		return ""
	case tag == "":
		return "no tag (it means latest)"
	case tag == "latest":
		return "the tag latest"
	case repo == "":
		return "no repository"
	}
	return ""
}

// dockerfileFacts is what the compose checks need from the Dockerfile.
type dockerfileFacts struct {
	defaultCommand string // the runtime stage's CMD
	runtimeEnv     map[string]string
}

// checkDockerfile checks a Dockerfile against go.mod and the commands the
// Makefile builds, and returns what it found besides the errors.
func checkDockerfile(src, goDirective, toolchain string, cmds []string) (dockerfileFacts, []error) {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	facts := dockerfileFacts{runtimeEnv: map[string]string{}}
	stages, err := parseDockerfile(src)
	if err != nil {
		return facts, []error{err}
	}
	if len(stages) < 2 {
		fail("the Dockerfile has %d stage: build in one stage and copy the binaries into a small runtime stage (multi-stage)", len(stages))
	}
	names := map[string]bool{}
	builders := 0
	for _, st := range stages {
		if names[st.image] {
			names[st.name] = true
			continue // FROM an earlier stage
		}
		if why := pinned(st.image); why != "" {
			fail("line %d: FROM %s has %s: pin a tag (or digest)", st.from.line, st.image, why)
		}
		if repo, tag, _ := splitImage(st.image); repo == "golang" || repo == "docker.io/library/golang" {
			builders++
			v := regexp.MustCompile(`^\d+\.\d+(\.\d+)?`).FindString(tag)
			switch {
			case v == "":
				fail("line %d: builder %s names no Go version: pin golang:<version>", st.from.line, st.image)
			case strings.Count(v, ".") == 1:
				// golang:1.26 is the newest 1.26 release: compare language versions.
				if version.Compare("go"+v, version.Lang("go"+goDirective)) < 0 {
					fail("line %d: builder %s is older than go.mod's go %s", st.from.line, st.image, goDirective)
				}
			default:
				if version.Compare("go"+v, "go"+goDirective) < 0 {
					fail("line %d: builder %s is older than go.mod's go %s", st.from.line, st.image, goDirective)
				}
				if toolchain != "" && version.Compare("go"+v, "go"+toolchain) < 0 {
					fail("line %d: builder %s is older than go.mod's toolchain go%s", st.from.line, st.image, toolchain)
				}
			}
		}
		if st.name != "" {
			names[st.name] = true
		}
	}
	if builders == 0 {
		fail("no stage builds FROM golang:<version>")
	}

	// The build: one go build of every command, static and trimmed.
	var build *instruction
	var buildStage stage
	for _, st := range stages[:len(stages)-1] {
		for i, in := range st.body {
			if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
				build, buildStage = &st.body[i], st
			}
		}
	}
	if build == nil {
		fail("no build stage runs go build")
	} else {
		for _, c := range cmds {
			if !regexp.MustCompile(`(^|\s)\./` + regexp.QuoteMeta(c) + `(\s|$)`).MatchString(build.args) {
				fail("line %d: go build does not build ./%s, one of the Makefile's CMDS", build.line, c)
			}
		}
		var env strings.Builder
		for _, in := range buildStage.body {
			if in.cmd == "ENV" || in.cmd == "ARG" || in.cmd == "RUN" {
				env.WriteString(in.args + " ")
			}
		}
		if !regexp.MustCompile(`(^|\s)CGO_ENABLED=0(\s|$)`).MatchString(env.String()) {
			fail("the build stage does not set CGO_ENABLED=0: the runtime image has no C library to link against")
		}
		if !strings.Contains(env.String(), "-trimpath") {
			fail("the build does not use -trimpath: binaries would carry the builder's paths")
		}
	}

	// The runtime stage: copies the binaries, runs as a user that is not root.
	rt := stages[len(stages)-1]
	user, copies := "", false
	for _, in := range rt.body {
		switch in.cmd {
		case "USER":
			user = in.args
		case "COPY":
			if strings.Contains(in.args, "--from=") {
				copies = true
			}
		case "ENV":
			for _, kv := range strings.Fields(in.args) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					facts.runtimeEnv[k] = v
				}
			}
		case "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
				fail("line %d: CMD %s is not the exec form [\"command\", ...]", in.line, in.args)
			} else {
				facts.defaultCommand = argv[0]
			}
		}
	}
	if !copies {
		fail("the runtime stage copies nothing from the build stage (COPY --from=...)")
	}
	name, _, _ := strings.Cut(user, ":")
	switch name {
	case "":
		fail("the runtime stage sets no USER: the container would run as root")
	case "root", "0":
		fail("the runtime stage runs as USER %s: use an unprivileged user", user)
	}
	if facts.defaultCommand != "" && !contains(cmds, facts.defaultCommand) {
		fail("CMD runs %s, which is not one of the commands built (%v)", facts.defaultCommand, cmds)
	}
	return facts, errs
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(raw)
}

// dockerfile checks the repository's Dockerfile and returns its facts.
func dockerfile(t *testing.T) dockerfileFacts {
	t.Helper()
	goDirective, toolchain := goModVersions(t)
	facts, errs := checkDockerfile(readRepoFile(t, "Dockerfile"), goDirective, toolchain, makefileCommands(t))
	for _, err := range errs {
		t.Errorf("Dockerfile: %v", err)
	}
	return facts
}

func TestDockerfile(t *testing.T) {
	facts := dockerfile(t)
	if facts.defaultCommand != "worker" {
		t.Errorf("the image's default command is %q, want worker", facts.defaultCommand)
	}
	// Every DMFLOW_* the image sets is read by one of its commands.
	for k := range facts.runtimeEnv {
		read := false
		for _, c := range makefileCommands(t) {
			read = read || commandEnv(t, c)[k]
		}
		if strings.HasPrefix(k, "DMFLOW_") && !read {
			t.Errorf("the Dockerfile sets %s, which none of %v reads", k, makefileCommands(t))
		}
	}
	// The build context must not carry local state or secrets into the image.
	ignore := readRepoFile(t, ".dockerignore")
	for _, p := range []string{".env", ".dmflow", ".git", ".bin"} {
		if !regexp.MustCompile(`(?m)^/?` + regexp.QuoteMeta(p) + `/?\s*$`).MatchString(ignore) {
			t.Errorf(".dockerignore does not exclude %s", p)
		}
	}
}

// TestDockerfileChecksCatch proves checkDockerfile fails on the mistakes it
// is there for, starting from the real Dockerfile.
func TestDockerfileChecksCatch(t *testing.T) {
	real := readRepoFile(t, "Dockerfile")
	goDirective, toolchain := goModVersions(t)
	cmds := makefileCommands(t)
	builder := regexp.MustCompile(`(?m)^FROM (golang:\S+)`).FindStringSubmatch(real)
	runtime := regexp.MustCompile(`(?m)^FROM (alpine:\S+|gcr\.io/distroless/\S+)`).FindStringSubmatch(real)
	user := regexp.MustCompile(`(?m)^USER .*$`).FindString(real)
	if builder == nil || runtime == nil || user == "" {
		t.Fatalf("the Dockerfile changed shape (builder %v, runtime %v, user %q): update this test", builder, runtime, user)
	}
	replace := func(old, new string) func(*testing.T, string) string {
		return func(t *testing.T, s string) string {
			if !strings.Contains(s, old) {
				t.Fatalf("the Dockerfile has no %q to break", old)
			}
			return strings.Replace(s, old, new, 1)
		}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*testing.T, string) string
		want   string
	}{
		{"builder older than go.mod", replace("FROM "+builder[1], "FROM golang:1.21.13-bookworm"), "older than go.mod"},
		{"builder without a version", replace("FROM "+builder[1], "FROM golang:bookworm"), "names no Go version"},
		{"unpinned runtime", replace("FROM "+runtime[1], "FROM "+strings.SplitN(runtime[1], ":", 2)[0]), "no tag"},
		{"latest runtime", replace("FROM "+runtime[1], "FROM "+strings.SplitN(runtime[1], ":", 2)[0]+":latest"), "the tag latest"},
		{"runs as root", replace(user, "USER root"), "USER root"},
		{"runs as uid 0", replace(user, "USER 0:0"), "USER 0:0"},
		{"no USER", replace(user, ""), "sets no USER"},
		{"a command not built", replace(" ./simdevice", ""), "./simdevice"},
		{"cgo on", replace("ENV CGO_ENABLED=0", "ENV CGO_ENABLED=1"), "CGO_ENABLED=0"},
		{"single stage", func(*testing.T, string) string {
			return "FROM golang:1.26.8\nENV CGO_ENABLED=0\nRUN go build -trimpath ./worker ./starter ./localhub ./simdevice\nUSER 10001\nCMD [\"worker\"]\n"
		}, "multi-stage"},
		{"shell-form CMD", replace(`CMD ["worker"]`, "CMD worker"), "exec form"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := checkDockerfile(tc.mutate(t, real), goDirective, toolchain, cmds)
			if !anyContains(errs, tc.want) {
				t.Errorf("errors %v, want one containing %q", errs, tc.want)
			}
		})
	}
}

func anyContains(errs []error, want string) bool {
	for _, err := range errs {
		if strings.Contains(err.Error(), want) {
			return true
		}
	}
	return false
}

func TestPinned(t *testing.T) {
	for _, tc := range []struct {
		ref string
		ok  bool
	}{
		{"postgres:16.15", true},
		{"temporalio/server:1.32.1", true},
		{"localhost:5000/dmflow:1.0", true},
		{"dmflow@sha256:" + strings.Repeat("ab", 32), true},
		{"postgres", false},
		{"postgres:latest", false},
		{"localhost:5000/dmflow", false},
		{"dmflow@sha256:abc", false},
		{"dmflow:${TAG}", false},
		{"", false},
	} {
		if got := pinned(tc.ref) == ""; got != tc.ok {
			t.Errorf("pinned(%q) = %q, want pinned=%v", tc.ref, pinned(tc.ref), tc.ok)
		}
	}
}
