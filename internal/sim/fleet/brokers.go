package fleet

import (
	"fmt"
	"net"
	"strconv"
)

// MaxLoopbackAddresses is how many addresses LoopbackBrokers hands out:
// 127.0.0.1 to 127.0.0.254.
const MaxLoopbackAddresses = 254

// LoopbackBrokers returns the Brokers that spread a fleet of count devices
// over as few loopback addresses of one localhub as put at most perAddress
// devices on each: tls://127.0.0.1:PORT, tls://127.0.0.2:PORT, …, PORT
// being that of mqttAddr (localhub's MQTT address, e.g. 127.0.0.1:8883).
// localhub must listen on 0.0.0.0:PORT to accept on them all; Linux routes
// all of 127.0.0.0/8 to lo. Every connection comes from 127.0.0.1, which
// has some 28,000 ephemeral ports (net.ipv4.ip_local_port_range) towards
// one address and port: perAddress stays below that.
func LoopbackBrokers(mqttAddr string, count, perAddress int) ([]string, error) {
	_, port, err := net.SplitHostPort(mqttAddr)
	if err != nil {
		return nil, fmt.Errorf("MQTT address %q is not host:port: give localhub's, e.g. 127.0.0.1:8883", mqttAddr)
	}
	if count < 1 || perAddress < 1 {
		return nil, fmt.Errorf("%d devices at %d an address: both must be 1 or more", count, perAddress)
	}
	k := (count + perAddress - 1) / perAddress
	if k > MaxLoopbackAddresses {
		return nil, fmt.Errorf("%d devices at %d an address need %d addresses, more than the %d of 127.0.0.1 to 127.0.0.%d: put %d or more on each",
			count, perAddress, k, MaxLoopbackAddresses, MaxLoopbackAddresses, (count+MaxLoopbackAddresses-1)/MaxLoopbackAddresses)
	}
	brokers := make([]string, k)
	for i := range brokers {
		brokers[i] = "tls://" + net.JoinHostPort("127.0.0."+strconv.Itoa(i+1), port)
	}
	return brokers, nil
}
