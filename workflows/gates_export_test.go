package workflows

import (
	"log/slog"
	"testing"

	"go.temporal.io/sdk/log"
)

// RestoredProgress is the progress a run continued with in (its State) starts from: restore, as the
// next run does it, before it runs.
func RestoredProgress(t testing.TB, in RolloutInput) RolloutProgress {
	t.Helper()
	in = in.withDefaults()
	threshold, err := ParseThreshold(in.MaxFailures)
	if err != nil {
		t.Fatal(err)
	}
	r := &rollout{in: in, threshold: threshold, logger: log.NewStructuredLogger(slog.New(slog.DiscardHandler))}
	if err := r.restore(in.State); err != nil {
		t.Fatal(err)
	}
	r.now = r.st.AwaitingSince
	return r.progress()
}
