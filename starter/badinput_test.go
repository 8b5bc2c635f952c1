package main

import (
	"path/filepath"
	"testing"
)

// Every command and subcommand given bad flags, arguments or files answers
// one line naming the fix, exits 2 and contacts no Temporal.
func TestBadInputStartsNothing(t *testing.T) {
	dir, write := specFiles(t)
	broken := write("broken.yaml", "query: [\nfirmware: {uri: https://fw.example/v2.bin")
	misspelt := write("misspelt.yaml", "query: SELECT * FROM devices\nfirmware: {uri: https://fw.example/v2.bin, versoin: 2.0.0}\n")
	named := write("named.yaml", "name: fw-2\nquery: SELECT * FROM devices\nreboot: true\n")
	badIDs := write("ids.txt", "dev-1\ndev 2\n")
	fw := []string{"--firmware", "https://fw.example/v2.bin", "--version", "2.0.0"}

	tests := []refusal{
		{"unknown command", []string{"bogus"}, []string{`unknown command "bogus"`, "starter --help"}},
		{"unknown global flag", []string{"reboot", "--device", "d", "--bogus"}, []string{"unknown flag: --bogus", "starter reboot --help"}},
		{"bad output", []string{"reboot", "--device", "d", "-o", "yaml"}, []string{`--output "yaml"`, "text or json"}},

		{"reboot without device", []string{"reboot"}, []string{"--device is required", "e.g. --device dev-001"}},
		{"reboot with an argument", []string{"reboot", "dev-1"}, []string{"takes no arguments", "flags start with --"}},
		{"reboot bad duration", []string{"reboot", "--device", "d", "--method-timeout", "soon"}, []string{`invalid argument "soon" for "--method-timeout"`}},
		{"reboot bad device ID", []string{"reboot", "--device", "dev/1"}, []string{"dev/1"}},

		{"firmware without flags", []string{"firmware"}, []string{"missing --device", "e.g. --uri https://"}},
		{"firmware with an argument", []string{"firmware", "dev-1"}, []string{"takes no arguments"}},
		{"firmware URI with a SAS", []string{"firmware", "-d", "d", "--version", "2", "--uri", "https://a.blob.core.windows.net/fw.bin?sig=SECRET"}, []string{"use a URI without credentials"}},

		{"rollout unknown subcommand", []string{"rollout", "begin"}, []string{`unknown rollout command "begin"`, "use start, status"}},
		{"rollout start without flags", []string{"rollout", "start"}, []string{"--name is required", "no targets: give --query", "no operation"}},
		{"rollout start missing spec file", append([]string{"rollout", "start", "--name", "r", "--spec", filepath.Join(dir, "none.yaml")}, fw...), []string{"no such file", "give the path of a rollout spec file"}},
		{"rollout start spec is a directory", []string{"rollout", "start", "--name", "r", "--spec", dir}, []string{"is a directory", "rollout spec file"}},
		{"rollout start broken spec", []string{"rollout", "start", "--name", "r", "--spec", broken}, []string{"broken.yaml", "line"}},
		{"rollout start misspelt field", []string{"rollout", "start", "--name", "r", "--spec", misspelt}, []string{"line 2, firmware.versoin: unknown field", "the fields here are"}},
		{"rollout start missing devices file", []string{"rollout", "start", "--name", "r", "--reboot", "--devices-file", filepath.Join(dir, "none.txt")}, []string{"no such file", "a file of device IDs"}},
		{"rollout start bad device in file", []string{"rollout", "start", "--name", "r", "--reboot", "--devices-file", badIDs}, []string{"ids.txt", "line 2"}},
		{"rollout start bad rate", append([]string{"rollout", "start", "--name", "r", "--devices", "a", "--rate", "fast"}, fw...), []string{`--rate "fast"`, "e.g. 100/s"}},
		{"rollout start bad window", []string{"rollout", "start", "--name", "r", "--devices", "a", "--reboot", "--window", "sometimes"}, []string{`window "sometimes"`, "e.g."}},
		{"rollout start bad name", []string{"rollout", "start", "--name", "r/1", "--devices", "a", "--reboot"}, []string{`name "r/1"`}},
		{"rollout status without name", []string{"rollout", "status"}, []string{"name the rollout", "starter rollout status NAME"}},
		{"rollout status bad name", []string{"rollout", "status", "fw/2"}, []string{`rollout name "fw/2"`, "letters, digits"}},
		{"rollout watch bad flag", []string{"rollout", "watch", "r", "--interval", "1s"}, []string{"unknown flag: --interval", "starter rollout watch --help"}},
		{"rollout pause without name", []string{"rollout", "pause"}, []string{"name the rollout"}},
		{"rollout resume two names", []string{"rollout", "resume", "a", "b"}, []string{"name the rollout"}},
		{"rollout cancel bad name", []string{"rollout", "cancel", "-x"}, []string{"unknown shorthand flag"}},
		{"rollout report bad format", []string{"rollout", "report", "r", "--format", "xml"}, []string{`--format "xml"`, "table, json or csv"}},
		{"rollout report out in a missing directory", []string{"rollout", "report", "r", "--out", filepath.Join(dir, "none", "r.csv")}, []string{"does not exist", "create it"}},
		{"rollout report out is a directory", []string{"rollout", "report", "r", "--out", dir}, []string{"is a directory", "report.csv"}},

		{"schedule unknown subcommand", []string{"schedule", "make"}, []string{`unknown schedule command "make"`, "use create, list"}},
		{"schedule create without name", []string{"schedule", "create"}, []string{"name the schedule"}},
		{"schedule create without flags", []string{"schedule", "create", "weekly"}, []string{"no times: give --cron", "no targets"}},
		{"schedule create bad cron", []string{"schedule", "create", "weekly", "--cron", "sometimes", "--reboot", "--devices", "a"}, []string{`--cron "sometimes"`, "e.g. \"0 2 * * SUN\""}},
		{"schedule create bad time zone", []string{"schedule", "create", "weekly", "--cron", "@daily", "--timezone", "Mars/Olympus", "--reboot", "--devices", "a"}, []string{`"Mars/Olympus"`, "IANA name"}},
		{"schedule create named spec", []string{"schedule", "create", "weekly", "--cron", "@daily", "--spec", named}, []string{"named.yaml: name", "remove name from the spec"}},
		{"schedule create bad name", []string{"schedule", "create", "week/ly", "--cron", "@daily", "--reboot", "--devices", "a"}, []string{"schedule name", "letters, digits"}},
		{"schedule list with an argument", []string{"schedule", "list", "weekly"}, []string{"takes no arguments"}},
		{"schedule describe without name", []string{"schedule", "describe"}, []string{"name the schedule", "starter schedule list"}},
		{"schedule pause bad name", []string{"schedule", "pause", "a/b"}, []string{"schedule name", "letters, digits"}},
		{"schedule unpause without name", []string{"schedule", "unpause"}, []string{"name the schedule"}},
		{"schedule trigger two names", []string{"schedule", "trigger", "a", "b"}, []string{"name the schedule"}},
		{"schedule delete bad flag", []string{"schedule", "delete", "weekly", "--force"}, []string{"unknown flag: --force", "starter schedule delete --help"}},
	}
	checkRefusals(t, tests)
}
