package hub

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Files in the state directory besides the TLS material and the store.
//
// The policy key lives in its own 0600 file rather than in the bbolt store
// because bbolt locks its file exclusively: `localhub connection-string` must
// read the key while the server holds the store open. The runtime file tells
// that command where the running server listens.
const (
	storeFile     = "localhub.db"
	policyKeyFile = "iothubowner.key"
	runtimeFile   = "localhub.json"
)

// PolicyName names the shared access policy with every permission, like
// IoT Hub's built-in iothubowner; its key is generated and kept in the
// state directory, and the other policies' keys derive from it (Policies).
const PolicyName = "iothubowner"

// keyBytes is the size of generated keys, the size IoT Hub generates.
const keyBytes = 32

func newKey() (string, error) {
	b := make([]byte, keyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// loadOrCreatePolicyKey returns the iothubowner key of the state directory,
// generating it on first use.
func loadOrCreatePolicyKey(dir string) (string, error) {
	key, err := readPolicyKey(dir)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if key, err = newKey(); err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, policyKeyFile), []byte(key+"\n"), 0o600); err != nil {
		return "", err
	}
	return key, nil
}

func readPolicyKey(dir string) (string, error) {
	path := filepath.Join(dir, policyKeyFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	key := strings.TrimSpace(string(raw))
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(b) < 16 {
		return "", fmt.Errorf("%s does not hold a base64 key: delete it to generate a new one (existing service connection strings stop working)", path)
	}
	return key, nil
}

// runtimeInfo is what a running localhub publishes about itself in the state
// directory. It holds no secrets.
type runtimeInfo struct {
	PID       int    `json:"pid"`
	HostName  string `json:"hostName"`
	MQTTAddr  string `json:"mqttAddr"`
	HTTPSAddr string `json:"httpsAddr"`
}

func writeRuntime(dir string, info runtimeInfo) error {
	raw, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, runtimeFile), append(raw, '\n'), 0o644)
}

func readRuntime(dir string) (runtimeInfo, error) {
	var info runtimeInfo
	raw, err := os.ReadFile(filepath.Join(dir, runtimeFile))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		return info, fmt.Errorf("%s: %w", filepath.Join(dir, runtimeFile), err)
	}
	return info, nil
}
