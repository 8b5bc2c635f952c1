package hubconn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
)

// probeDeviceID names a device that is never registered: reading it proves
// the hub answers and accepts the key at the cost of one registry read.
const probeDeviceID = "dmflow-connection-check"

// Check proves the hub is reachable and accepts the service key, so a
// command fails at start with a line naming the setting rather than in the
// middle of a workflow. setting names where the connection string came from.
func Check(ctx context.Context, c *iotservice.Client, setting string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err := c.GetDevice(ctx, probeDeviceID)
	var re *iotservice.RequestError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re) && re.Code == http.StatusNotFound:
		return nil
	case errors.As(err, &re) && (re.Code == http.StatusUnauthorized || re.Code == http.StatusForbidden):
		return fmt.Errorf("IoT Hub %s refused the key in %s (HTTP %d): use a policy with registry read and service connect rights, e.g. iothubowner", c.HostName(), setting, re.Code)
	case errors.As(err, &re):
		return fmt.Errorf("IoT Hub %s answered HTTP %d to a registry read: check the HostName in %s", c.HostName(), re.Code, setting)
	default:
		return fmt.Errorf("cannot reach IoT Hub %s (HostName in %s): %v: start localhub (`make up`) or fix the host name; for localhub also set DMFLOW_HUB_CA_FILE to its ca.pem", c.HostName(), setting, err)
	}
}
