package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/cli"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/workflows"
	"github.com/spf13/cobra"
)

type firmwareFlags struct {
	device       string
	uri          string
	version      string
	updateID     string
	stageTimeout time.Duration
	deadline     time.Duration
	reboot       bool
	wait         bool
	taskQueue    string
}

func newFirmwareCommand(g *globals) *cobra.Command {
	var f firmwareFlags
	cmd := &cobra.Command{
		Use:   "firmware --device ID --uri URI --version V [--wait]",
		Short: "Update a device's firmware (direct method firmwareUpdate, followed through its reported stages)",
		Long: `Starts the FirmwareUpdate workflow for one device. A device that already
reports the version is left alone (skipped). Otherwise the device is asked to
install the image at --uri, and followed through the stages it reports
(downloading, applying, completed), each within --stage-timeout; with --reboot
it is rebooted afterwards and must then report the new version.

The workflow ID is firmware/<device>/<update-id>: starting the same update
again attaches to the running workflow, and an update that already completed
is not run twice. The update ID also goes to the device, which ignores a
repeat. The URI must not carry credentials (no SAS sig=, no user:password@).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, err := f.input()
			if err != nil {
				return err
			}
			f.taskQueue = settings.Pick(g.getenv, f.taskQueue, settings.TaskQueue, workflows.TaskQueue)
			return withAPI(cmd, g, dialTemporal, func(ctx context.Context, t *temporalClient) error {
				return runFirmware(ctx, t, g.output, f, in, cmd.OutOrStdout())
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.device, "device", "d", "", "device ID (required)")
	fl.StringVar(&f.uri, "uri", "", "http(s) URI of the firmware image, without credentials (required)")
	fl.StringVar(&f.version, "version", "", "version the image holds; a device reporting it is skipped (required)")
	fl.StringVar(&f.updateID, "update-id", "", "update ID that makes the workflow ID and goes to the device; default: the current UTC second")
	fl.DurationVar(&f.stageTimeout, "stage-timeout", 0, "how long the device may take for each stage (default 2m)")
	fl.DurationVar(&f.deadline, "deadline", 0, "time budget for the whole update, reboot included (default 15m)")
	fl.BoolVar(&f.reboot, "reboot", false, "reboot the device after the update and confirm the new version")
	fl.BoolVarP(&f.wait, "wait", "w", false, "follow the workflow, showing the stages, and print its result")
	fl.StringVar(&f.taskQueue, "task-queue", "", "task queue of the worker (env DMFLOW_TASK_QUEUE, default "+workflows.TaskQueue+")")
	return cmd
}

// input checks the flags and builds the workflow input; problems are usage errors.
func (f firmwareFlags) input() (workflows.FirmwareInput, error) {
	var missing []string
	for _, m := range []struct{ flag, value, example string }{
		{"--device", f.device, "--device dev-001"},
		{"--uri", f.uri, "--uri https://fw.example/v2.bin"},
		{"--version", f.version, "--version 2.0.0"},
	} {
		if m.value == "" {
			missing = append(missing, m.flag+" (e.g. "+m.example+")")
		}
	}
	if len(missing) > 0 {
		return workflows.FirmwareInput{}, cli.UsageError{Err: fmt.Errorf("missing %s: name the device, the image and its version", strings.Join(missing, ", "))}
	}
	in := workflows.FirmwareInput{
		DeviceID:     f.device,
		PackageURI:   f.uri,
		Version:      f.version,
		UpdateID:     f.updateID,
		StageTimeout: f.stageTimeout,
		Deadline:     f.deadline,
		Reboot:       f.reboot,
	}
	if in.UpdateID == "" {
		// As for reboot: a start repeated within the same second is the same update.
		in.UpdateID = time.Now().UTC().Format("20060102T150405Z")
	}
	if err := in.Validate(); err != nil {
		return workflows.FirmwareInput{}, cli.UsageError{Err: err}
	}
	return in, nil
}

func runFirmware(ctx context.Context, t *temporalClient, output string, f firmwareFlags, in workflows.FirmwareInput, out io.Writer) error {
	return launch[workflows.FirmwareResult]{
		subject:    fmt.Sprintf("firmware update of %s to %s", in.DeviceID, in.Version),
		workflowID: workflows.FirmwareWorkflowID(in.DeviceID, in.UpdateID),
		workflow:   workflows.FirmwareUpdate,
		input:      in,
		taskQueue:  f.taskQueue,
		wait:       f.wait,
		progress:   firmwareProgress,
		summary:    printFirmwareResult,
	}.run(ctx, t, output, out)
}

// firmwareProgress merges the two views of a running FirmwareUpdate: the step and the stages the
// workflow knows, by query, and the stages FollowStages has seen so far, from its heartbeat
// details (which the query cannot see).
func firmwareProgress(ctx context.Context, t *temporalClient, id, runID string) ([]progressLine, error) {
	var st workflows.FirmwareStatus
	if err := t.query(ctx, id, runID, workflows.QueryStep, &st); err != nil {
		return nil, err
	}
	stages := st.Stages
	if st.Step == workflows.StepFollowingStages {
		desc, err := t.tc.DescribeWorkflowExecution(ctx, id, runID)
		if err != nil {
			return nil, err
		}
		if p, ok, err := activities.PendingFollowStages(desc.GetPendingActivities()); err == nil && ok && len(p.Stages) > len(stages) {
			stages = p.Stages
		}
	}
	return firmwareLines(st, stages), nil
}

// firmwareLines are the live-view lines of a FirmwareUpdate: its steps and the device's stages,
// the status it reported before the update first.
func firmwareLines(st workflows.FirmwareStatus, stages []workflows.StageSeen) []progressLine {
	var lines []progressLine
	if len(stages) == 0 && st.Stage != "" && st.Step != workflows.StepCheckingVersion {
		// The status before the update, from the first twin read, which ended when the next step
		// began; shown once, before that step.
		lines = append(lines, progressLine{key: "initial stage", at: st.Since.Sub(st.Started), text: "stage " + st.Stage + " (before the update)"})
	}
	lines = append(lines, progressLine{key: "step " + st.Step, at: st.Since.Sub(st.Started), text: st.Step})
	for _, s := range stages {
		text := "stage " + s.Status
		switch {
		case !s.ReportedAt.IsZero():
			text += " (device time " + s.ReportedAt.UTC().Format(time.RFC3339) + ")"
		case s.Reported != "":
			text += fmt.Sprintf(" (device time %q, no zone)", s.Reported)
		}
		lines = append(lines, progressLine{key: "stage " + s.Status, at: s.SeenAt.Sub(st.Started), text: text})
	}
	return lines
}

func printFirmwareResult(out io.Writer, r workflows.FirmwareResult) {
	if r.Status == workflows.FirmwareSkipped {
		fmt.Fprintf(out, "skipped %s: it already runs %s (hub calls %d)\n", r.DeviceID, r.Version, r.HubCalls)
		return
	}
	from := ""
	if r.FromVersion != "" {
		from = " from " + r.FromVersion
	}
	fmt.Fprintf(out, "updated %s%s to %s in %s: attempts %d, hub calls %d\n",
		r.DeviceID, from, r.Version, r.Duration.Round(100*time.Millisecond), r.Attempts, r.HubCalls)
	if len(r.Stages) > 0 {
		parts := make([]string, len(r.Stages))
		for i, s := range r.Stages {
			parts[i] = fmt.Sprintf("%s +%.1fs", s.Status, s.SeenAt.Sub(r.Started).Seconds())
		}
		fmt.Fprintf(out, "  stages: %s\n", strings.Join(parts, ", "))
	}
	if len(r.MethodPayload) > 0 {
		fmt.Fprintf(out, "  device said: %s\n", activities.PayloadString(r.MethodPayload))
	}
	if r.Reboot != nil {
		fmt.Fprintf(out, "  rebooted: rebootTime %s, attempts %d\n", rebootTimeText(*r.Reboot), r.Reboot.Attempts)
	}
	if r.VersionUnknown {
		fmt.Fprintf(out, "  %s\n", workflows.NoteVersionNotReported)
	}
}
