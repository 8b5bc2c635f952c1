package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/dmflow/dmflow/internal/deviceid"

	"github.com/dmflow/dmflow/workflows"
)

// The devices a rollout names: --devices (a comma-separated list) and --devices-file (one ID a line).

// checkDeviceIDs checks the IDs of --devices: legal, no repeats; blanks between commas are
// ignored.
func checkDeviceIDs(list []string) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	for _, id := range list {
		id = strings.TrimSpace(id)
		if id == "" {
			continue
		}
		if err := deviceid.Check(id); err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, fmt.Errorf("device %s is listed twice", id)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, errors.New("no device IDs")
	}
	return ids, nil
}

// readDeviceFile reads --devices-file: a path, or "-" for stdin. Errors start with the file's
// name, after the flag the caller puts before them.
func readDeviceFile(path string, stdin io.Reader) ([]string, error) {
	if path == "-" {
		return parseDeviceList(stdin, "-")
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, fileProblem(err, "a file of device IDs, one per line, or - for standard input"))
	}
	defer fh.Close()
	return parseDeviceList(fh, path)
}

// fileProblem turns an error opening a file the user named into its reason and the fix: what the
// file should be.
func fileProblem(err error, want string) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: give the path of %s", err, want)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: make it readable, or give another copy of %s", err, want)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("is a directory: give the path of %s", want)
	}
	return err
}

// maxDeviceLine bounds a line of a device list; a device ID has at most 128 characters, so a
// longer line is a wrong file (a binary, a CSV export with many columns).
const maxDeviceLine = 4096

// parseDeviceList reads one device ID per line. Blank lines are ignored, and so is a line whose
// first word starts with # (a comment; an ID starting with # cannot be listed this way), and
// anything after the ID that starts with #. IDs are checked as IoT Hub does and must not repeat;
// an error names source and the line. A UTF-8 byte-order mark and CRLF line ends are accepted.
func parseDeviceList(r io.Reader, source string) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxDeviceLine)
	var ids []string
	seen := map[string]int{}
	listBytes := 0
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
		}
		fields := strings.Fields(text)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) > 1 && !strings.HasPrefix(fields[1], "#") {
			return nil, fmt.Errorf("%s line %d: %s holds more than one word: give one device ID per line (a # starts a comment)", source, line, quoteShort(strings.TrimSpace(text)))
		}
		id := fields[0]
		if err := deviceid.Check(id); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", source, line, err)
		}
		if first, dup := seen[id]; dup {
			return nil, fmt.Errorf("%s line %d: device %s repeats line %d", source, line, id, first)
		}
		seen[id] = line
		ids = append(ids, id)
		if listBytes += len(id) + 3; listBytes > workflows.MaxDeviceListBytes {
			// Measured as the workflow measures it, once past the limit.
			if err := workflows.CheckDeviceList(ids); err != nil {
				return nil, fmt.Errorf("%s line %d: %w", source, line, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s line %d: longer than %d bytes: not a list of device IDs", source, line+1, maxDeviceLine)
		}
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s holds no device IDs", source)
	}
	return ids, nil
}
