// Package deploy holds dmflow's deployment checks, and the Compose overrides
// that point the stack of the repository's docker-compose.yml at a real
// Azure IoT Hub (compose.azure-iot-hub.yml) or at Temporal Cloud
// (compose.temporal-cloud.yml).
//
// The tests load the compose files with the compose-spec loader
// (github.com/compose-spec/compose-go/v2, the library Docker Compose itself
// loads files with) in each way docs/deployment.md uses them, and check them
// against the code rather than against lists kept here: every image pinned;
// the services dmflow needs present; the ports published those the programs
// listen on (localhub's defaults from internal/sim/hub, Temporal's from the SDK);
// the variables set for worker, localhub and simdevice ones that command
// reads (derived from its source and, for Temporal, from what
// internal/temporalconn looks up); the search attributes registered those
// the workflows package declares; no secret written in a file. They check
// the root Dockerfile too: multi-stage, a builder at least as new as
// go.mod's go directive, every command built static, a non-root runtime.
// Each check has a test that breaks a copy of the file and expects the fault
// to be named.
//
// Nothing here runs Docker: the checks cover what the files and the code
// say, not that the images start.
package deploy
