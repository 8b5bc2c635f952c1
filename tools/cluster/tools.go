//go:build tools

// Package cluster pins the Temporal server, its SQL schema tool and the
// Temporal Web UI server that `make up-cluster` builds into .bin/: the
// production shape of docker-compose.yml without Docker. A module of its own
// so that the server's dependencies do not meet the CLI's (tools/go.mod) or
// dmflow's.
package cluster

import (
	_ "github.com/temporalio/ui-server/v2/cmd/server"
	_ "go.temporal.io/server/cmd/server"
	_ "go.temporal.io/server/cmd/tools/sql"
)
