package fleet

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/dmflow/dmflow/internal/deviceid"
	"github.com/dmflow/dmflow/internal/protocol"
	"github.com/dmflow/dmflow/internal/sim/device"
)

// Profile is the behaviour a member of the fleet simulates.
type Profile string

// Fault profiles. A device has exactly one.
const (
	// Healthy devices do what the tutorials' devices do.
	Healthy Profile = "healthy"
	// Offline devices are registered but never connect.
	Offline Profile = "offline"
	// Flapping devices drop their connection about every
	// Faults.FlapInterval and come back.
	Flapping Profile = "flapping"
	// Slow devices take Faults.SlowFactor times as long for every
	// firmware stage and reboot.
	Slow Profile = "slow"
	// Failing devices fail every firmware update, in downloading or in
	// applying (Member.FailStage).
	Failing Profile = "failing"
	// Unresponsive devices connect and subscribe but never answer a method.
	Unresponsive Profile = "unresponsive"
)

// Profiles lists the profiles in the order Plan assigns them.
var Profiles = []Profile{Offline, Flapping, Slow, Failing, Unresponsive, Healthy}

// Defaults of Faults.
const (
	DefaultSlowFactor   = 3.0
	DefaultFlapInterval = 30 * time.Second
)

// Faults are the fractions of the fleet (0 to 1, at most 1 together) given
// each fault profile; the rest is Healthy. Tutorial, the share of devices
// on the tutorial contract, is not a profile and not part of that sum: it
// combines with the profiles (see Plan).
type Faults struct {
	Offline      float64
	Flapping     float64
	Slow         float64
	Failing      float64
	Unresponsive float64
	// SlowFactor multiplies a slow device's stage and reboot durations.
	// Default DefaultSlowFactor.
	SlowFactor float64
	// FlapInterval is how long a flapping device stays connected (±20%).
	// Default DefaultFlapInterval.
	FlapInterval time.Duration
	// Tutorial is the share of the fleet (0 to 1) that plays the
	// tutorials' device apps exactly (device.ContractTutorial); the rest
	// runs device.ContractDmflow. The tutorial's device has no error
	// state, so these devices are chosen among those not Failing: Tutorial
	// plus Failing is at most 1.
	Tutorial float64
}

func (f *Faults) fill() error {
	var sum float64
	for _, v := range []struct {
		name string
		frac float64
	}{{"offline", f.Offline}, {"flapping", f.Flapping}, {"slow", f.Slow}, {"failing", f.Failing}, {"unresponsive", f.Unresponsive}} {
		if v.frac < 0 || v.frac > 1 || math.IsNaN(v.frac) {
			return fmt.Errorf("fault fraction %s %v is not between 0 and 1: use e.g. 0.05 for 5%% of the devices", v.name, v.frac)
		}
		sum += v.frac
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("fault fractions add up to %.3g, more than 1: a device has one profile, so keep their sum at most 1", sum)
	}
	switch {
	case f.Tutorial < 0 || f.Tutorial > 1 || math.IsNaN(f.Tutorial):
		return fmt.Errorf("tutorial share %v is not between 0 and 1: use e.g. 0.5 for half of the devices", f.Tutorial)
	case f.Tutorial+f.Failing > 1+1e-9:
		return fmt.Errorf("tutorial share %v and failing fraction %v add up to more than 1: the tutorial's device has no error state, so tutorial devices are chosen among those not failing", f.Tutorial, f.Failing)
	}
	switch {
	case f.SlowFactor == 0:
		f.SlowFactor = DefaultSlowFactor
	case f.SlowFactor < 1 || math.IsNaN(f.SlowFactor) || math.IsInf(f.SlowFactor, 0):
		return fmt.Errorf("slow factor %v is less than 1: slow devices take that many times as long, e.g. 3", f.SlowFactor)
	}
	switch {
	case f.FlapInterval == 0:
		f.FlapInterval = DefaultFlapInterval
	case f.FlapInterval < 0:
		return fmt.Errorf("flap interval %s is negative: use e.g. 30s", f.FlapInterval)
	}
	return nil
}

func (f Faults) fraction(p Profile) float64 {
	switch p {
	case Offline:
		return f.Offline
	case Flapping:
		return f.Flapping
	case Slow:
		return f.Slow
	case Failing:
		return f.Failing
	case Unresponsive:
		return f.Unresponsive
	}
	return 0
}

// Member is one device of the fleet and its profile.
type Member struct {
	ID      string
	Profile Profile
	// FailStage is where a Failing device fails (protocol.StatusDownloading
	// or protocol.StatusApplying); empty for other profiles.
	FailStage string
	// Contract is the device's contract: device.ContractDmflow or
	// device.ContractTutorial (see Faults.Tutorial).
	Contract string
	// Answer is how a tutorial device answers firmwareUpdate,
	// device.AnswerObject or device.AnswerString; empty on the dmflow
	// contract.
	Answer string
}

// DeviceID names the index-th device (from 1) of a fleet of count:
// prefix plus the index zero-padded to the width of count, at least 3
// digits (dev-001).
func DeviceID(prefix string, index, count int) string {
	width := max(3, len(strconv.Itoa(count)))
	return fmt.Sprintf("%s%0*d", prefix, width, index)
}

// Plan assigns the profiles: round(fraction × count) devices each, chosen
// by a shuffle seeded with seed, so the same seed, count and faults give
// the same devices the same profiles. Failing devices fail in downloading
// or applying, also by seed. Only the fractions matter, so a test can plan
// the fleet a `simdevice fleet` process runs from the same flags.
//
// Then round(Tutorial × count) devices, chosen by seed among those not
// Failing, get the tutorial contract; the others keep theirs, so a
// tutorial device may also be offline, flapping, slow or unresponsive,
// which do not depend on the contract. Half of the tutorial devices
// (rounded down, by seed) answer firmwareUpdate with a JSON string, the
// others with an object. The contracts are drawn after the profiles, from
// the same seed: a Tutorial share leaves the profiles as they are without
// it.
func Plan(prefix string, count int, seed int64, faults Faults) []Member {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x646d666c6f77)) // "dmflow"
	members := make([]Member, count)
	for i := range members {
		members[i] = Member{ID: DeviceID(prefix, i+1, count), Profile: Healthy, Contract: device.ContractDmflow}
	}
	perm := rng.Perm(count)
	next := 0
	for _, p := range Profiles[:len(Profiles)-1] {
		n := max(0, min(int(math.Round(faults.fraction(p)*float64(count))), count-next))
		for _, i := range perm[next : next+n] {
			members[i].Profile = p
		}
		next += n
	}
	for i := range members {
		if members[i].Profile == Failing {
			members[i].FailStage = []string{protocol.StatusDownloading, protocol.StatusApplying}[rng.IntN(2)]
		}
	}
	planTutorial(members, rng, faults.Tutorial)
	return members
}

// planTutorial gives round(share × len(members)) members not Failing the
// tutorial contract, the first half of them in rng's order the string
// answer.
func planTutorial(members []Member, rng *rand.Rand, share float64) {
	n := int(math.Round(share * float64(len(members))))
	if n <= 0 {
		return
	}
	var candidates []int
	for i, m := range members {
		if m.Profile != Failing {
			candidates = append(candidates, i)
		}
	}
	n = min(n, len(candidates))
	for k, j := range rng.Perm(len(candidates))[:n] {
		m := &members[candidates[j]]
		m.Contract, m.Answer = device.ContractTutorial, device.AnswerObject
		if k < n/2 {
			m.Answer = device.AnswerString
		}
	}
}

// validPrefix applies IoT Hub's device-ID rule to the prefix, leaving room for the index.
func validPrefix(p string) error {
	switch {
	case len(p) > 100:
		return errors.New("prefix is longer than 100 characters: device IDs have at most 128")
	case p == "":
		return nil
	}
	return deviceid.CheckAs("prefix", p)
}

// ShareForm is the expected shape of a share, quoted in errors.
const ShareForm = "a fraction from 0 to 1 such as 0.5, or a percentage such as 50%"

// ParseShare reads a share of the fleet given as a fraction (0.5) or a
// percentage (50%).
func ParseShare(s string) (float64, error) {
	s = strings.TrimSpace(s)
	num, pct := strings.CutSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a share: use %s", s, ShareForm)
	}
	if pct {
		if v < 0 || v > 100 {
			return 0, fmt.Errorf("%q is not between 0%% and 100%%: use %s", s, ShareForm)
		}
		return v / 100, nil
	}
	if v < 0 || v > 1 {
		return 0, fmt.Errorf("%q is not between 0 and 1: use %s", s, ShareForm)
	}
	return v, nil
}
