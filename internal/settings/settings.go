// Package settings names the environment variables dmflow's commands share
// (Azure's names where Azure has them, DMFLOW_* for dmflow's own) and
// resolves a setting the one way every command does: flag, then
// environment, then default.
package settings

// Environment variables read by more than one command.
const (
	// HubConnectionString is the IoT Hub service (policy) connection string.
	HubConnectionString = "IOTHUB_CONNECTION_STRING"
	// DeviceConnectionString is one device's connection string.
	DeviceConnectionString = "IOTHUB_DEVICE_CONNECTION_STRING"
	// HubCAFile is a PEM file of extra roots for the hub (localhub's ca.pem).
	HubCAFile = "DMFLOW_HUB_CA_FILE"
	// MQTTBroker overrides the device side's broker URL.
	MQTTBroker = "DMFLOW_MQTT_BROKER"
	// TaskQueue is the Temporal task queue of worker and starter.
	TaskQueue = "DMFLOW_TASK_QUEUE"
	// LogFormat is text or json.
	LogFormat = "DMFLOW_LOG_FORMAT"
	// TemporalUI is the Temporal Web UI base URL used in links.
	TemporalUI = "DMFLOW_TEMPORAL_UI"
	// MetricsAddress is the host:port a command serves Prometheus metrics on; empty for none.
	MetricsAddress = "DMFLOW_METRICS_ADDRESS"
	// Identity is the Temporal client identity starter rollout approve records as the approver.
	Identity = "DMFLOW_IDENTITY"
)

// Pick returns flag when set, else the environment variable env when set,
// else def. getenv is os.Getenv outside tests.
func Pick(getenv func(string) string, flag, env, def string) string {
	if flag != "" {
		return flag
	}
	if v := getenv(env); v != "" {
		return v
	}
	return def
}
