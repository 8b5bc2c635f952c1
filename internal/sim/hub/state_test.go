package hub

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyKey(t *testing.T) {
	dir := t.TempDir()
	key, err := loadOrCreatePolicyKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := loadOrCreatePolicyKey(dir)
	if err != nil || again != key {
		t.Errorf("second load = %q, %v; want the same key", again, err)
	}
	fi, err := os.Stat(filepath.Join(dir, policyKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if err := os.WriteFile(filepath.Join(dir, policyKeyFile), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreatePolicyKey(dir); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("damaged key file = %v, want an error naming the fix", err)
	}
}

func TestRuntimeFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := readRuntime(dir); !os.IsNotExist(err) {
		t.Errorf("readRuntime of an empty dir = %v", err)
	}
	in := runtimeInfo{PID: 42, HostName: "localhost", MQTTAddr: "127.0.0.1:1", HTTPSAddr: "127.0.0.1:2"}
	if err := writeRuntime(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := readRuntime(dir)
	if err != nil || out != in {
		t.Errorf("readRuntime = %+v, %v", out, err)
	}
}
