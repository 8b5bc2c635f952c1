package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmflow/dmflow/internal/cli/clitest"
	"github.com/dmflow/dmflow/internal/testnet"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refusal is a command line the starter refuses as bad input, and what its one line must say: the
// problem and its fix.
type refusal struct {
	name string
	args []string
	want []string
}

// checkRefusals runs each command line against a Temporal address that counts its connections:
// each must exit 2 with one line saying each of want, dial no Temporal and repeat no credentials
// (the test inputs spell theirs SECRET).
func checkRefusals(t *testing.T, cases []refusal) {
	t.Helper()
	temporal, accepted := testnet.CountingListener(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := accepted()
			var stdout, stderr bytes.Buffer
			code := execute(append(tc.args, "--temporal-address", temporal), &stdout, &stderr, func(string) string { return "" })
			clitest.CheckUsage(t, "starter", code, stderr.String(), tc.want...)
			assert.NotContains(t, stderr.String(), "SECRET", "the error repeats the credentials")
			assert.Zero(t, accepted()-before, "Temporal was dialled")
		})
	}
}

// specFiles writes files (spec files, device lists) into a test's own folder, returned as dir;
// write returns the path of the file it wrote.
func specFiles(t *testing.T) (dir string, write func(name, content string) string) {
	dir = t.TempDir()
	return dir, func(name, content string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
		return path
	}
}
