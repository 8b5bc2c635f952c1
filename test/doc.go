// Package test holds dmflow's integration tests: they start real processes —
// the Temporal CLI dev server, localhub, simdevice, the worker and the
// starter — on free loopback ports in a temporary directory, drive them, and
// stop them (by PID) when done, also when a test fails.
//
// They carry the build tag "integration" so that plain `go test ./...` stays
// fast; `make test` runs them with the binaries it built (DMFLOW_BIN_DIR,
// DMFLOW_TEMPORAL_BIN).
//
// The chaos cases (TestChaos*, chaos_test.go) run short by default and with
// 500 to 1,000 devices under DMFLOW_CHAOS=long (`make chaos`).
package test
