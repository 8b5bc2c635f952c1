package main

import (
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/logging"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/temporalconn"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/pflag"
)

// Setting names, quoted in errors so a user knows what to change.
const (
	envHubConnectionString = settings.HubConnectionString
	envHubCAFile           = settings.HubCAFile
	envTaskQueue           = settings.TaskQueue
	envLogFormat           = settings.LogFormat
)

// Config is the worker's whole configuration. The hub connection string lives
// here and only here: workflows never see it, so it never reaches history.
type Config struct {
	Hub       hubconn.Service
	CAFile    string
	TaskQueue string
	LogFormat string
	Temporal  temporalconn.Config
}

// flagValues are the raw flag values; empty means "not given".
type flagValues struct {
	caFile, taskQueue, logFormat, address, namespace string
}

func (f *flagValues) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.caFile, "ca-file", "", "PEM file of extra CA roots for the hub, e.g. localhub's ca.pem (env "+envHubCAFile+")")
	fs.StringVar(&f.taskQueue, "task-queue", "", "task queue to poll (env "+envTaskQueue+", default "+workflows.TaskQueue+")")
	fs.StringVar(&f.logFormat, "log-format", "", "log format "+logging.Formats+" (env "+envLogFormat+", default text)")
	fs.StringVar(&f.address, "temporal-address", "", "Temporal frontend host:port (overrides TEMPORAL_ADDRESS)")
	fs.StringVar(&f.namespace, "temporal-namespace", "", "Temporal namespace (overrides TEMPORAL_NAMESPACE)")
}

// resolve applies flags over the environment and validates the result.
func (f flagValues) resolve(getenv func(string) string) (Config, error) {
	pick := func(flag, env, def string) string { return settings.Pick(getenv, flag, env, def) }
	cfg := Config{
		CAFile:    pick(f.caFile, envHubCAFile, ""),
		TaskQueue: pick(f.taskQueue, envTaskQueue, workflows.TaskQueue),
		LogFormat: pick(f.logFormat, envLogFormat, "text"),
		Temporal:  temporalconn.Config{Address: f.address, Namespace: f.namespace},
	}
	hub, err := hubconn.ParseService(envHubConnectionString, getenv(envHubConnectionString))
	if err != nil {
		return Config{}, err
	}
	cfg.Hub = hub
	return cfg, nil
}
