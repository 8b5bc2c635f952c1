// Command tutorial is the baseline dmflow is measured against: the
// firmware-update service app of Microsoft's IoT Hub tutorial, as written
// there. For each device, one after another, it invokes firmwareUpdate, then
// reads the twin at a fixed interval until the device reports completed (or
// error), with no retries. It prints what that cost: hub calls, time, and how
// late each stage was seen.
//
//	tutorial --devices dev-001,dev-002 --uri https://fw.example/v2.bin --version 2.0.0 [--interval 6s]
//
// It reads IOTHUB_CONNECTION_STRING and DMFLOW_HUB_CA_FILE like the worker.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/settings"
	"github.com/dmflow/dmflow/internal/sim/fleet"
)

// deviceRun is what one device's update cost.
type deviceRun struct {
	Device     string        `json:"device"`
	Status     string        `json:"status"`
	MethodCall int           `json:"methodCalls"`
	TwinReads  int           `json:"twinReads"`
	Duration   time.Duration `json:"duration"`
	// Lag is, per stage, how long after the device's own timestamp the
	// loop saw it; a stage the loop never saw (it read the twin before and
	// after it) is missing.
	Lag map[string]time.Duration `json:"lag"`
	Err string                   `json:"error,omitempty"`
}

// summary is the whole run.
type summary struct {
	Devices   int           `json:"devices"`
	Interval  time.Duration `json:"interval"`
	HubCalls  int           `json:"hubCalls"`
	Duration  time.Duration `json:"duration"`
	Completed int           `json:"completed"`
	Runs      []deviceRun   `json:"runs"`
}

func main() {
	devices := flag.String("devices", "", "comma-separated device IDs, updated one after another")
	prefix := flag.String("prefix", "", "with --count: update the devices of `simdevice fleet --prefix P --count N` instead of --devices")
	count := flag.Int("count", 0, "with --prefix: how many fleet devices, updated one after another")
	uri := flag.String("uri", "https://fw.example/v2.bin", "firmware package URI")
	version := flag.String("version", "2.0.0", "firmware version")
	interval := flag.Duration("interval", 6*time.Second, "twin read interval (the tutorial's fixed loop)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up on a device after this long")
	flag.Parse()
	ids, err := deviceIDs(*devices, *prefix, *count)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tutorial:", err)
		os.Exit(2)
	}
	s, err := hubconn.ParseService(settings.HubConnectionString, os.Getenv(settings.HubConnectionString))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tutorial:", err)
		os.Exit(2)
	}
	hub, err := hubconn.NewServiceClient(s, os.Getenv(settings.HubCAFile))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tutorial:", err)
		os.Exit(2)
	}
	defer hub.Close()

	sum := summary{Interval: *interval}
	start := time.Now()
	for i, id := range ids {
		r := update(context.Background(), hub, id, *uri, *version, fmt.Sprintf("tutorial-%d-%d", start.Unix(), i), *interval, *timeout)
		sum.Runs = append(sum.Runs, r)
		sum.HubCalls += r.MethodCall + r.TwinReads
		if r.Status == protocol.StatusCompleted {
			sum.Completed++
		}
	}
	sum.Devices = len(sum.Runs)
	sum.Duration = time.Since(start)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(sum)
}

// deviceIDs are the devices to update: the list given, or the fleet's.
func deviceIDs(list, prefix string, count int) ([]string, error) {
	switch {
	case list != "" && (prefix != "" || count != 0):
		return nil, errors.New("give either --devices or --prefix with --count, not both")
	case list != "":
		return strings.Split(list, ","), nil
	case prefix == "" || count < 1:
		return nil, errors.New("--devices is required, e.g. --devices dev-001,dev-002, or --prefix and --count of a fleet, e.g. --prefix dev- --count 100")
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = fleet.DeviceID(prefix, i+1, count)
	}
	return ids, nil
}

func update(ctx context.Context, hub *iotservice.Client, id, uri, version, updateID string, interval, timeout time.Duration) (r deviceRun) {
	r = deviceRun{Device: id, Lag: map[string]time.Duration{}}
	start := time.Now()
	defer func() { r.Duration = time.Since(start) }()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	r.MethodCall++
	res, err := hub.CallDeviceMethod(ctx, id, &iotservice.MethodCall{
		MethodName:      protocol.MethodFirmwareUpdate,
		ResponseTimeout: 60,
		Payload: map[string]any{
			protocol.FieldPackageURI: uri,
			protocol.FieldVersion:    version,
			protocol.FieldUpdateID:   updateID,
		},
	})
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if res.Status != 200 {
		r.Err = fmt.Sprintf("device answered %d", res.Status)
		return r
	}
	stamps := map[string]string{
		protocol.StatusDownloading: protocol.PropDownloadComplete,
		protocol.StatusApplying:    protocol.PropStartedApplyingImage,
		protocol.StatusCompleted:   protocol.PropLastFirmwareUpdate,
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Err = ctx.Err().Error()
			return r
		case <-tick.C:
		}
		r.TwinReads++
		twin, err := hub.GetDeviceTwin(ctx, id)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				r.Err = err.Error()
				return r
			}
			continue // the tutorial just prints and reads again
		}
		rep := twin.Properties.Reported
		if rep[protocol.PropFirmwareUpdateID] != updateID {
			continue
		}
		status, _ := rep[protocol.PropFirmwareStatus].(string)
		if prop, ok := stamps[status]; ok {
			if _, seen := r.Lag[status]; !seen {
				if at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rep[prop])); err == nil {
					r.Lag[status] = time.Since(at)
				}
			}
		}
		if status == protocol.StatusCompleted || status == protocol.StatusError {
			r.Status = status
			return r
		}
	}
}
