package hub

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// Permission is a right a shared access policy grants, named as IoT Hub
// names it. A Permission value may hold several.
type Permission uint8

// IoT Hub's permissions.
const (
	// RegistryRead reads the identity registry: identities, listings,
	// queries, registry statistics.
	RegistryRead Permission = 1 << iota
	// RegistryWrite creates, updates and deletes identities, bulk included.
	RegistryWrite
	// ServiceConnect reaches the service-facing endpoints: twins, direct
	// methods, service statistics.
	ServiceConnect
	// DeviceConnect connects devices with a token signed by the policy
	// rather than by the device's own key.
	DeviceConnect

	allPermissions = RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect
)

var permissionNames = []struct {
	p    Permission
	name string
}{{RegistryRead, "RegistryRead"}, {RegistryWrite, "RegistryWrite"}, {ServiceConnect, "ServiceConnect"}, {DeviceConnect, "DeviceConnect"}}

// String lists the permissions as IoT Hub does: "RegistryRead, ServiceConnect".
func (p Permission) String() string {
	var names []string
	for _, n := range permissionNames {
		if p&n.p != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "no permission"
	}
	return strings.Join(names, ", ")
}

// Policy is a shared access policy.
type Policy struct {
	Name        string
	Permissions Permission
}

// Policies are localhub's shared access policies, the ones IoT Hub creates
// with every hub. iothubowner's key is generated and kept in the state
// directory; the others' keys are derived from it (see policyKey).
var Policies = []Policy{
	{PolicyName, allPermissions},
	{"service", ServiceConnect},
	{"device", DeviceConnect},
	{"registryRead", RegistryRead},
	{"registryReadWrite", RegistryRead | RegistryWrite},
}

func lookupPolicy(name string) (Policy, bool) {
	for _, p := range Policies {
		if p.Name == name {
			return p, true
		}
	}
	return Policy{}, false
}

func policyNames() string {
	names := make([]string, len(Policies))
	for i, p := range Policies {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

// policyKey returns the decoded key of a policy given the decoded
// iothubowner key. The other policies' keys are HMAC-SHA256 of their names
// under the owner key: they need no files of their own, change when the
// owner key does, and give nobody who holds the owner key (and with it
// every permission) anything new.
func policyKey(ownerKey []byte, name string) []byte {
	if name == PolicyName {
		return ownerKey
	}
	m := hmac.New(sha256.New, ownerKey)
	m.Write([]byte("localhub shared access policy " + name))
	return m.Sum(nil)
}

// policyConnectionString returns a policy's connection string for host,
// given the decoded owner key.
func policyConnectionString(host string, ownerKey []byte, name string) (string, error) {
	if _, ok := lookupPolicy(name); !ok {
		return "", fmt.Errorf("no shared access policy %q: localhub has %s", name, policyNames())
	}
	key := base64.StdEncoding.EncodeToString(policyKey(ownerKey, name))
	return "HostName=" + host + ";SharedAccessKeyName=" + name + ";SharedAccessKey=" + key, nil
}
