// Package deviceid holds IoT Hub's rule for device IDs, the one rule the workflows, the starter,
// the simulated devices and localhub's registry check device IDs by (and the workflows the request
// and update IDs that sit next to device IDs in workflow IDs).
//
// The source is IoT Hub's identity registry, "Device identity properties"
// (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-identity-registry): deviceId is "a
// case-sensitive string (up to 128 characters long) of ASCII 7-bit alphanumeric characters plus
// certain special characters: - . % _ * ? ! ( ) , : = @ $ '", to which newer revisions add + and #.
//
// The Event Grid schema reference lists ';' as well; this rule refuses it. A device reaches the hub
// with a connection string, HostName=…;DeviceId=…;SharedAccessKey=…, whose parts ';' separates:
// github.com/amenzhinsky/iothub's parser (common.ParseConnectionString, used by
// iotdevice.ParseConnectionString) splits a DeviceId "a;b" at the ';' and refuses the string as
// malformed, or, for "a;b=c", reads the device ID as "a". A device with a ';' in its ID could be
// registered but never connect with the connection string the registry hands out, so dmflow does
// not accept one anywhere.
package deviceid

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxLen is the most characters (bytes: they are all ASCII) a device ID may have.
const MaxLen = 128

// Special are the characters besides ASCII letters and digits a device ID may hold.
const Special = "-.+%_#*?!(),:=@$'"

// Rule is the rule in words, for messages: the fix a refusal names.
const Rule = "use 1 to 128 ASCII letters, digits and " + Special + " (IoT Hub's device-ID rule)"

// Check reports whether id is a legal IoT Hub device ID: nil, or an error that names the problem
// and the fix, e.g. `device ID "dev/1" holds '/': use 1 to 128 ASCII letters, digits and … (IoT
// Hub's device-ID rule)`.
func Check(id string) error {
	return CheckAs("device ID", id)
}

// CheckAs checks an ID that follows the device-ID rule, such as a request ID, naming it what in
// the message.
func CheckAs(what, id string) error {
	if p := problem(id); p != "" {
		return fmt.Errorf("%s%s%s: %s", what, quote(id), p, Rule)
	}
	return nil
}

// problem says what is wrong with id, starting with a space, or "".
func problem(id string) string {
	switch {
	case id == "":
		return " is empty"
	case len(id) > MaxLen:
		return fmt.Sprintf(" has %d characters", len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte(Special, c) >= 0:
		case c == ';':
			return " holds ';', which would end the DeviceId of its connection string (HostName=…;DeviceId=…;SharedAccessKey=…)"
		case c >= 0x80:
			return " holds a non-ASCII character"
		default:
			return " holds " + strconv.QuoteRune(rune(c))
		}
	}
	return ""
}

// quote quotes id for a message after a space, shortened so that the message stays one short
// line (escapes count: a control character quotes as four); an empty id is left out.
func quote(id string) string {
	const max = 64
	if id == "" {
		return ""
	}
	q := strconv.Quote(id)
	if len(q) <= max {
		return " " + q
	}
	for n := min(len(id), max); n > 0; n-- {
		if q = strconv.Quote(id[:n]); len(q) <= max {
			break
		}
	}
	return " " + q + "…"
}
