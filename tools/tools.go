//go:build tools

// Package tools pins the command-line tools the Makefile builds (the Temporal
// CLI dev server) in their own module, so their dependencies stay out of the
// main go.mod.
package tools

import (
	_ "github.com/temporalio/cli/cmd/temporal"
)
