package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
	"github.com/cenkalti/backoff/v4"

	"github.com/dmflow/dmflow/internal/hubconn"
	"github.com/dmflow/dmflow/internal/sim/device"
)

// BulkSize is how many identities one bulk registry request carries, IoT
// Hub's limit.
const BulkSize = 100

// errCodeDeviceAlreadyExists is IoT Hub's number for DeviceAlreadyExists
// in bulk results.
const errCodeDeviceAlreadyExists = 409001

// RegisterResult says what Register did.
type RegisterResult struct {
	// Conns holds each device's connection, in the order of the IDs.
	Conns []hubconn.Device
	// Created and Existing count new and already registered identities.
	Created, Existing int
	// Bulk is false when the hub refused the bulk API and identities were
	// created one by one.
	Bulk bool
	// Took is how long it took.
	Took time.Duration
}

// Register returns a connection for every ID, registering the missing
// identities. It creates them with fresh keys through the bulk registry API
// (POST /devices, BulkSize a request, concurrency requests at a time) and
// reads the ones that already exist, so it is idempotent: a second run
// creates nothing and returns the same keys. A hub without the bulk API
// gets one PUT per device instead. Throttling and server errors are retried
// with backoff.
func Register(ctx context.Context, svc *iotservice.Client, ids []string, concurrency int, log *slog.Logger) (RegisterResult, error) {
	start := time.Now()
	if concurrency < 1 {
		concurrency = 1
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := RegisterResult{Conns: make([]hubconn.Device, len(ids)), Bulk: true}
	var (
		created, existing atomic.Int64
		noBulk            atomic.Bool
		firstErr          error
		errOnce           sync.Once
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	chunks := make(chan int)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := range chunks {
				hi := min(lo+BulkSize, len(ids))
				c, e, err := registerChunk(ctx, svc, ids[lo:hi], res.Conns[lo:hi], &noBulk)
				if err != nil {
					fail(err)
					continue
				}
				created.Add(int64(c))
				existing.Add(int64(e))
			}
		}()
	}
	for lo := 0; lo < len(ids); lo += BulkSize {
		select {
		case chunks <- lo:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(chunks)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	res.Created, res.Existing = int(created.Load()), int(existing.Load())
	res.Bulk = !noBulk.Load()
	res.Took = time.Since(start)
	if firstErr != nil {
		return res, firstErr
	}
	log.Info("fleet registered", "devices", len(ids), "created", res.Created, "existing", res.Existing,
		"bulk", res.Bulk, "took", res.Took.Round(time.Millisecond).String())
	return res, nil
}

// registerChunk registers up to BulkSize devices and fills conns.
func registerChunk(ctx context.Context, svc *iotservice.Client, ids []string, conns []hubconn.Device, noBulk *atomic.Bool) (created, existing int, err error) {
	if !noBulk.Load() {
		idents := make([]*iotservice.Device, len(ids))
		for i, id := range ids {
			idents[i] = device.NewIdentity(id)
		}
		var res *iotservice.BulkResult
		err := retry(ctx, func() error {
			var err error
			res, err = svc.CreateDevices(ctx, idents)
			return err
		})
		switch {
		case isStatus(err, http.StatusNotFound), isStatus(err, http.StatusMethodNotAllowed), isStatus(err, http.StatusNotImplemented):
			noBulk.Store(true)
		case err != nil:
			return 0, 0, fmt.Errorf("register devices %s…%s in bulk: %w", ids[0], ids[len(ids)-1], err)
		case !res.IsSuccessful && len(res.Errors) == 0:
			// The client turns every 400 into a result; one without
			// per-device errors refused the request as a whole.
			return 0, 0, fmt.Errorf("register devices %s…%s in bulk: the hub refused the request", ids[0], ids[len(ids)-1])
		default:
			failed := make(map[string]*iotservice.BulkError, len(res.Errors))
			for _, e := range res.Errors {
				if e != nil {
					failed[e.DeviceID] = e
				}
			}
			for i, id := range ids {
				e, bad := failed[id]
				switch {
				case !bad:
					conns[i], err = device.Connection(svc, idents[i])
					created++
				case e.ErrorCode == errCodeDeviceAlreadyExists:
					conns[i], err = existingConnection(ctx, svc, id)
					existing++
				default:
					err = fmt.Errorf("register device %s: %s (error code %d)", id, e.ErrorStatus, e.ErrorCode)
				}
				if err != nil {
					return 0, 0, err
				}
			}
			return created, existing, nil
		}
	}
	for i, id := range ids {
		var c hubconn.Device
		err := retry(ctx, func() error {
			var err error
			c, err = device.Provision(ctx, svc, id)
			return err
		})
		if err != nil {
			return 0, 0, err
		}
		conns[i] = c
	}
	return len(ids), 0, nil
}

func existingConnection(ctx context.Context, svc *iotservice.Client, id string) (hubconn.Device, error) {
	var dev *iotservice.Device
	err := retry(ctx, func() error {
		var err error
		dev, err = svc.GetDevice(ctx, id)
		return err
	})
	if err != nil {
		return hubconn.Device{}, fmt.Errorf("read device %s: %w", id, err)
	}
	return device.Connection(svc, dev)
}

// retry runs op until it succeeds, fails for good (a 4xx other than 429)
// or a minute passed.
func retry(ctx context.Context, op func() error) error {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(time.Minute),
	)
	return backoff.Retry(func() error {
		err := op()
		var re *iotservice.RequestError
		if errors.As(err, &re) && re.Code < 500 && re.Code != http.StatusTooManyRequests {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(b, ctx))
}

func isStatus(err error, code int) bool {
	var re *iotservice.RequestError
	return errors.As(err, &re) && re.Code == code
}
