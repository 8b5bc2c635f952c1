package workflows

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmflow/dmflow/activities"
	"github.com/dmflow/dmflow/internal/protocol"
	"go.temporal.io/sdk/workflow"
)

// Continuous targeting (RolloutInput.Continuous): a firmware rollout by query that, once the
// devices its query selected at the start have all finished, keeps looking for devices that come
// to match later (registered later, tagged later, reporting another version again) and updates
// them too, within the waves, threshold, concurrency and rate, until Continuous.Until or a cancel.
//
// How new devices are found within the hub's query quota. A look is one query of the form
//
//	SELECT * FROM devices WHERE (<the target condition>)
//	  AND <firmwareVersion differs or is missing>
//	  AND <not touched by this rollout>
//	  AND properties.reported.$metadata.$lastUpdated >= '<the last look's time less LookOverlap>'
//
// read a page (up to 1,000 twins, one query of the quota) at a time, as the waves need devices:
// a look that finds nothing costs one query, every Continuous.Every (default 5 minutes: 12
// queries an hour, against S1's 20 a minute). Only what IoT Hub documents is used: the hub keeps
// the time of the last change of every object of the reported properties,
// properties.reported.$metadata[.<property>].$lastUpdated, in UTC ISO 8601; the query language
// compares strings with < <= > >=, has IS_DEFINED, IN and NIN, and takes 8,192 characters. The
// times are written with seven zero digits after the whole second ('2026-12-07T10:00:00.0000000Z')
// so that the string comparison orders every width the hub writes ('…:00Z', '…:00.1Z',
// '…:00.1234567Z') as their times order. localhub answers the same queries the same way.
//
// Clock skew and the query's lag. IoT Hub's query results are eventually consistent ("delays of up
// to 30 minutes should be tolerated", mostly seconds), and the times compared are the hub's while
// the look's cutoff is the workflow's. So each look reaches LookOverlap (30 minutes) before the
// time of the one before, and a device that changed is seen by several looks: those found within
// the overlap are kept in a bounded recent set (at most maxRecent IDs, their shard and when it
// closed) and dropped from later looks; a look waits while the set has no room for a page.
//
// What a look does not see: a device whose reported properties did not change since the last look
// (tags carry no time in IoT Hub, so a device tagged later is found at its next report: every
// device on dmflow's contract reports at each connection, and the tutorials' device reports
// firmwareStatus standBy at every start); and nothing is looked for while paused (the next look
// covers the time since the last: nothing is missed).
//
// Never twice. The rollout keeps no list of the devices it updated (a fleet of 100,000 would not
// fit in its state); the twin is the list. A device this rollout updated is left out of every look
// and, should a look find it all the same (the query's lag), skipped before any call by the read
// its shard makes first (activities.Touched): it reports this rollout's update ID
// (firmwareUpdateId, devices on dmflow's contract), or the hub stamped a firmwareStatus of an
// update, or the tutorial's downloadComplete, startedApplyingImage or lastFirmwareUpdate, since
// the rollout began (less touchedSlack for the skew). A device on dmflow's contract that reports
// the target version is left out by the version condition. So a device runs again only when its
// first run never reached it (offline, refused by the hub): the call was not delivered, so nothing
// was applied. Looks begin only once every device of the first resolution finished, so that a
// look does not find a device the first resolution still holds; after that the recent set keeps
// the devices of one look from a second look while they run.
//
// Waves: the devices a look finds join the next wave of the plan, which keeps growing by Growth,
// each wave at most MaxLookWave devices; the threshold judges them as it judges any wave. Each look
// that finds devices adds a wave and a shard to the state carried over continue-as-new (a few
// bytes each): what bounds a continuous rollout's state is its Until.
// A reboot rollout cannot be continuous (no version tells which devices still need it); nor can a
// scheduled one (its runs would overlap, each looking for the same devices).

// continuousChange is the workflow.GetVersion change ID of continuous targeting; asked only by
// rollouts with RolloutInput.Continuous set.
const continuousChange = "continuous-targeting"

// Bounds and defaults of continuous targeting.
const (
	// DefaultLookEvery is how often a continuous rollout looks for new devices.
	DefaultLookEvery = 5 * time.Minute
	// MinLookEvery is the shortest interval between looks starter accepts: a look costs at least
	// one query of the hub's quota (20 a minute per S1 unit, shared with everything else).
	MinLookEvery = 30 * time.Second
	// MinLookEveryInput is the shortest the workflow takes (tests against localhub look faster).
	MinLookEveryInput = time.Second
	// MaxLookEvery is the longest interval between looks.
	MaxLookEvery = 24 * time.Hour
	// LookOverlap is how far before the last look's time a look reaches: IoT Hub's documented
	// worst case for a change to show in query results, which also covers the clock skew
	// between the hub and the workflow.
	LookOverlap = 30 * time.Minute
	// MaxLookWave bounds the waves of the devices found by looks: the plan's growth would
	// otherwise make waves of millions after a few weeks of looks.
	MaxLookWave = 1000
	// touchedSlack is taken off the rollout's start to compare it with the hub's times: an update
	// stamped after that counts as this rollout's, whatever the skew between the two clocks.
	touchedSlack = 5 * time.Minute
	// maxRecent bounds the recent set (ID, shard, close time: about 15 bytes each, compressed,
	// through continue-as-new).
	maxRecent = 10000
)

// RolloutContinuous makes a rollout continuous.
type RolloutContinuous struct {
	// Until ends the looks: the rollout completes once the devices found before it finished.
	// Zero: it looks until it is cancelled (or aborts).
	Until time.Time `json:"until,omitzero"`
	// Every is the time between looks; default DefaultLookEvery.
	Every time.Duration `json:"every,omitempty"`
}

// LookState is a continuous rollout's state of its looks, carried over continue-as-new.
type LookState struct {
	// Looks counts the looks begun; Found the devices they placed in shards; Pages the query pages
	// they read (each a query of the hub's quota).
	Looks int `json:"looks"`
	Found int `json:"found"`
	Pages int `json:"pages,omitempty"`
	// Since is the workflow time the next look looks from (less LookOverlap): the time of the
	// last look that read all its pages, first the rollout's start. A failed look leaves it, so
	// that the next covers its time too.
	Since time.Time `json:"since"`
	// Next is when the next look is due (or a suspended look may go on); Last when the last began.
	Next time.Time `json:"next"`
	Last time.Time `json:"last,omitzero"`
	// Looking is set while a look has pages to read (the fleet's token is the look's); From is its
	// cutoff and At its start. Suspended: the recent set has no room for its next page.
	Looking   bool      `json:"looking,omitempty"`
	From      time.Time `json:"from,omitzero"`
	At        time.Time `json:"at,omitzero"`
	Suspended bool      `json:"suspended,omitempty"`
	// Error is why the last look failed; the next tries again.
	Error string `json:"error,omitempty"`
	// Ended is set once Until passed: no look any more.
	Ended bool `json:"ended,omitempty"`
	// Recent is the recent set, gzip-compressed JSON.
	Recent []byte `json:"recent,omitempty"`
}

// ContinuousProgress is what RolloutProgress shows of a continuous rollout's looks.
type ContinuousProgress struct {
	Until time.Time     `json:"until,omitzero"`
	Every time.Duration `json:"every"`
	// Looks counts the looks made, Found the devices they found (not counting those seen before).
	Looks int `json:"looks"`
	Found int `json:"found"`
	// LastLook is when the last look began; NextLook when the next is due, zero while none is
	// (Waiting says why).
	LastLook time.Time `json:"lastLook,omitzero"`
	NextLook time.Time `json:"nextLook,omitzero"`
	Waiting  string    `json:"waiting,omitempty"`
	// Error is why the last look failed; the next tries again.
	Error string `json:"error,omitempty"`
	// Ended is set once Until passed.
	Ended bool `json:"ended,omitempty"`
}

// ShardLook marks the shard of a look: its devices are skipped before any call when their twin
// shows an update since Since (activities.Touched).
type ShardLook struct {
	Look  int       `json:"look"`
	Since time.Time `json:"since"`
}

// recentEntry is a device found by a look: its shard, and when the rollout saw that shard closed.
type recentEntry struct {
	ID     string    `json:"i"`
	Shard  int       `json:"s"`
	Closed time.Time `json:"c,omitzero"`
}

// continuous is a continuous rollout's run-time state of its looks.
type continuous struct {
	every  time.Duration
	until  time.Time
	st     *LookState
	recent []recentEntry
	index  map[string]bool
	// cancelTimer cancels the timer armed for timerAt; timerSeq tells the current one.
	cancelTimer workflow.CancelFunc
	timerAt     time.Time
	timerSeq    int
}

// continuousProblems says what is wrong with the input's continuous targeting.
func (in RolloutInput) continuousProblems() []string {
	c := in.Continuous
	if c == nil {
		return nil
	}
	var problems []string
	if in.Operation != OperationFirmware {
		problems = append(problems, "continuous applies to a firmware rollout: a reboot has no version to tell the devices that still need it; start a reboot rollout for the new devices instead")
	}
	if in.State == nil && len(in.Devices) > 0 {
		problems = append(problems, "a continuous rollout selects its targets by query, not by device IDs: devices that come to match later are found by the query; give a query (SELECT * FROM devices WHERE tags.ring = 'beta')")
	}
	if in.Schedule != "" {
		problems = append(problems, "a schedule cannot start a continuous rollout: its runs would overlap, each looking for the same devices; start one continuous rollout (starter rollout start --continuous), or schedule reconcile rollouts (--reconcile), which update the devices that drifted or joined since the last run")
	}
	if c.Every != 0 && (c.Every < MinLookEveryInput || c.Every > MaxLookEvery) {
		problems = append(problems, fmt.Sprintf("look every %s must lie between %s and %s", c.Every, MinLookEveryInput, ShortDuration(MaxLookEvery)))
	}
	if in.RetryFailed && c.Until.IsZero() {
		problems = append(problems, "retry-failed runs the failed devices at the end, which a continuous rollout without until never reaches: give until, or drop retry-failed")
	}
	if in.Operation == OperationFirmware && in.Firmware != nil {
		if n := len(in.LookQuery(time.Time{}, time.Time{})); n > maxLookQuery {
			problems = append(problems, fmt.Sprintf("the query's condition is too long for a continuous rollout: its looks add %d characters to it and IoT Hub takes %d: shorten the condition",
				n-len(in.Query), maxLookQuery))
		}
	}
	return problems
}

// maxLookQuery is IoT Hub's limit on a query's text.
const maxLookQuery = 8192

// queryTime writes t for a comparison with the hub's times in a query: the whole second, then
// seven zero digits. Compared as strings, a hub time in the same second with any number of
// fraction digits (or none) is not before it, one in an earlier second is.
func queryTime(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05") + ".0000000Z"
}

// touchedStamps are the reported properties a firmware update writes: firmwareStatus with a stage
// of an update (standBy, which the tutorials' device reports at every start, is none), and the
// times the tutorials' device reports with each stage.
var touchedStamps = []activities.Stamp{
	{Property: protocol.PropFirmwareStatus, OneOf: updateStatuses},
	{Property: protocol.PropDownloadComplete},
	{Property: protocol.PropStartedApplyingImage},
	{Property: protocol.PropLastFirmwareUpdate},
}

// rolloutUpdateIDs are the update IDs this rollout sends: the first attempt's and the retry's.
func rolloutUpdateIDs(name string) []string {
	return []string{RolloutUpdateID(name, 1), RolloutUpdateID(name, 2)}
}

// LookQuery is the query of a continuous rollout's look reaching back to from (the twins whose
// reported properties changed since), leaving out the devices an update stamped since since (the
// rollout's start less a slack) touched: see the comment at the top of rollout_continuous.go.
func (in RolloutInput) LookQuery(from, since time.Time) string {
	reported := "properties.reported."
	var conds []string
	if cond, _ := activities.DeviceQueryCondition(in.Query); cond != "" {
		conds = append(conds, "("+cond+")")
	}
	version := reported + protocol.PropFirmwareVersion
	conds = append(conds, "(NOT IS_DEFINED("+version+") OR "+version+" != "+quoteQueryString(in.Firmware.Version)+")")
	ids := reported + protocol.PropFirmwareUpdateID
	conds = append(conds, "(NOT IS_DEFINED("+ids+") OR "+ids+" NIN "+queryList(rolloutUpdateIDs(in.Name))+")")
	for _, s := range touchedStamps {
		p := reported + s.Property
		c := "(NOT IS_DEFINED(" + p + ")"
		if len(s.OneOf) > 0 {
			c += " OR " + p + " NIN " + queryList(s.OneOf)
		}
		conds = append(conds, c+" OR "+reported+"$metadata."+s.Property+".$lastUpdated < '"+queryTime(since)+"')")
	}
	conds = append(conds, reported+"$metadata.$lastUpdated >= '"+queryTime(from)+"'")
	return allDevices + " WHERE " + strings.Join(conds, " AND ")
}

// queryList writes strings as an IoT Hub query array constant.
func queryList(values []string) string {
	quoted := make([]string, len(values))
	for i, v := range values {
		quoted[i] = quoteQueryString(v)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// startContinuous sets up the looks of a continuous rollout, in each of its runs.
func (r *rollout) startContinuous(ctx workflow.Context) error {
	in := r.in.Continuous
	if in == nil || r.fl == nil {
		return nil
	}
	if workflow.GetVersion(ctx, continuousChange, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	c := &continuous{every: in.Every, until: in.Until, index: map[string]bool{}}
	if c.every == 0 {
		c.every = DefaultLookEvery
	}
	if r.st.Looks == nil {
		r.st.Looks = &LookState{Since: r.st.Started, Next: r.st.Started.Add(c.every)}
		if len(r.fl.Sizes) == 0 && r.fl.Resolved {
			// Not an end: the looks may find some.
			r.reason = ""
		}
	}
	c.st = r.st.Looks
	if c.st.Recent != nil {
		if err := unpackJSON(c.st.Recent, &c.recent); err != nil {
			return err
		}
		for _, e := range c.recent {
			c.index[e.ID] = true
		}
	}
	r.cont = c
	return nil
}

// keepsLooking reports whether the rollout has looks to come: it does not complete meanwhile.
func (r *rollout) keepsLooking() bool {
	return r.cont != nil && !r.cont.st.Ended
}

// lookStep is the main loop's part of the looks: the end at Until, the look that is due, a
// suspended look that may go on, and the timer that wakes the loop for the next of these.
func (r *rollout) lookStep(ctx workflow.Context) error {
	c := r.cont
	if c == nil || c.st.Ended {
		return nil
	}
	now := workflow.Now(ctx)
	if !c.until.IsZero() && !now.Before(c.until) {
		r.endLooks(ctx)
		return nil
	}
	wake := time.Time{}
	switch {
	case r.st.Paused || r.cancelRequested || r.abortReason != "":
		// No look while paused: the next covers the time since the last.
	case c.st.Looking && c.st.Suspended:
		if now.Before(c.st.Next) {
			wake = c.st.Next
			break
		}
		if r.evictRecent(now) {
			c.st.Suspended = false
			r.fl.Resolved = false
			r.logger.Info("look goes on", "look", c.st.Looks)
		} else {
			c.st.Next = now.Add(c.every)
			wake = c.st.Next
		}
	case c.st.Looking || !r.fl.Resolved:
		// A look reads its pages as the waves need them; the next is due after it.
	case c.st.Looks == 0 && !r.firstTargetsDone():
		// The first look waits for the first resolution's devices: their tallies wake the loop.
	case now.Before(c.st.Next):
		wake = c.st.Next
	case !r.evictRecent(now):
		r.logger.Info("no room in the recent set for a look: looking later", "recent", len(c.recent))
		c.st.Next = now.Add(c.every)
		wake = c.st.Next
	default:
		if err := r.beginLook(ctx, now); err != nil {
			return err
		}
		if !c.st.Looking {
			wake = c.st.Next
		}
	}
	if !c.until.IsZero() && (wake.IsZero() || c.until.Before(wake)) {
		wake = c.until
	}
	r.armLookTimer(ctx, wake)
	return nil
}

// firstTargetsDone reports whether every device of the first resolution has finished.
func (r *rollout) firstTargetsDone() bool {
	return r.fl.Resolved && r.fl.Cursor >= len(r.fl.Sizes) && r.agg.Pending == 0 && r.agg.Running == 0
}

// beginLook starts a look: its first page now, the rest as the waves need them.
func (r *rollout) beginLook(ctx workflow.Context, now time.Time) error {
	c := r.cont
	c.st.Looks++
	c.st.Looking, c.st.Suspended, c.st.Error = true, false, ""
	c.st.At, c.st.Last, c.st.From = now, now, c.st.Since.Add(-LookOverlap)
	c.st.Next = now.Add(c.every)
	r.fl.Resolved, r.fl.Token = false, ""
	r.logger.Info("looking for devices that came to match", "look", c.st.Looks, "changed_since", c.st.From)
	return r.lookPage(ctx)
}

// lookPage reads the next page of the look in progress and places its devices, less those the
// recent set holds, in new shards. A failed read ends the look (the next tries again from the
// same time) rather than the rollout: resolvePage reads a look's pages through it.
func (r *rollout) lookPage(ctx workflow.Context) error {
	c := r.cont
	if len(c.recent)+pageDevices > maxRecent {
		c.st.Suspended, r.fl.Resolved = true, true
		c.st.Next = workflow.Now(ctx).Add(c.every)
		r.logger.Info("no room in the recent set for the look's next page: it goes on later", "look", c.st.Looks, "recent", len(c.recent))
		return nil
	}
	res, err := r.lookQueryPage(ctx)
	if err != nil {
		r.fl.Resolved, r.fl.Token = true, ""
		c.st.Looking, c.st.Suspended = false, false
		switch {
		case ctx.Err() != nil:
			return err
		case r.cancelRequested:
			return nil
		}
		c.st.Error = truncate(fmt.Sprintf("look %d: %v", c.st.Looks, err), maxErrorLength)
		r.logger.Warn("look failed: the next one looks again from the same time", "look", c.st.Looks, "error", err)
		r.touch(ctx)
		return nil
	}
	r.st.HubCalls++
	c.st.Pages++
	r.fl.Token = res.Next
	var page []ShardDevice
	seen := 0
	for _, d := range res.Devices {
		if c.index[d.DeviceID] {
			seen++
			continue
		}
		sd := ShardDevice{ID: d.DeviceID}
		sd.FromVersion, _ = d.Reported[protocol.PropFirmwareVersion].(string)
		sd.Skip = d.Reported[protocol.PropFirmwareVersion] != nil && sd.FromVersion == r.in.Firmware.Version
		page = append(page, sd)
	}
	slices.SortFunc(page, func(a, b ShardDevice) int { return strings.Compare(a.ID, b.ID) })
	page = slices.CompactFunc(page, func(a, b ShardDevice) bool { return a.ID == b.ID })
	for chunk := range slices.Chunk(page, ShardSize) {
		idx := len(r.fl.Sizes)
		if err := r.startShard(ctx, chunk); err != nil {
			return err
		}
		for _, d := range chunk {
			c.recent = append(c.recent, recentEntry{ID: d.ID, Shard: idx})
			c.index[d.ID] = true
		}
	}
	c.st.Found += len(page)
	if res.Next == "" {
		c.st.Looking = false
		c.st.Since = c.st.At
		r.fl.Resolved = true
	}
	if err := r.packRecent(); err != nil {
		return err
	}
	r.logger.Info("look read a page", "look", c.st.Looks, "found", len(page), "seen_before", seen, "last", res.Next == "")
	r.touch(ctx)
	return nil
}

// lookQueryPage reads the look's next page as queryPage reads the target query's, with a shorter
// budget for a throttled or unreachable hub: the main loop waits for the read, and a look that
// fails is made again at the next one's time.
func (r *rollout) lookQueryPage(ctx workflow.Context) (activities.QueryDevicesPageResult, error) {
	var a *activities.Activities
	c := r.cont
	in := activities.QueryDevicesPageInput{
		Query: r.in.LookQuery(c.st.From, r.st.Started.Add(-touchedSlack)), Token: r.fl.Token, Rate: r.rate,
		Properties: []string{protocol.PropFirmwareVersion},
	}
	qctx, cancel := workflow.WithCancel(queryOptions(ctx))
	opts := workflow.GetActivityOptions(qctx)
	opts.ScheduleToCloseTimeout = min(opts.ScheduleToCloseTimeout, max(c.every, lookBudget))
	qctx = workflow.WithActivityOptions(qctx, opts)
	r.cancelResolve = cancel
	defer func() { r.cancelResolve = nil }()
	var res activities.QueryDevicesPageResult
	err := workflow.ExecuteActivity(qctx, a.QueryDevicesPage, in).Get(ctx, &res)
	return res, err
}

// lookBudget bounds the retries of a look's page (or every, when longer).
const lookBudget = 5 * time.Minute

// evictRecent drops from the recent set the devices whose shard closed LookOverlap ago or more
// (a look no longer finds them as they were before their run), noting when a shard is first seen
// closed, and reports whether the set has room for a page.
func (r *rollout) evictRecent(now time.Time) bool {
	c := r.cont
	kept := c.recent[:0]
	for _, e := range c.recent {
		if e.Closed.IsZero() && r.record(e.Shard) == nil {
			e.Closed = now
		}
		if !e.Closed.IsZero() && !now.Before(e.Closed.Add(LookOverlap)) {
			delete(c.index, e.ID)
			continue
		}
		kept = append(kept, e)
	}
	c.recent = kept
	if err := r.packRecent(); err != nil {
		r.logger.Error("cannot pack the recent set", "error", err)
	}
	return len(c.recent)+pageDevices <= maxRecent
}

// packRecent keeps the recent set packed in the state, ready for continue-as-new.
func (r *rollout) packRecent() error {
	c := r.cont
	if len(c.recent) == 0 {
		c.st.Recent = nil
		return nil
	}
	packed, err := packJSON(c.recent)
	if err != nil {
		return err
	}
	c.st.Recent = packed
	return nil
}

// endLooks ends the looks once Until passed: a look in progress reads no further page, and the
// rollout completes once the devices found so far finished.
func (r *rollout) endLooks(ctx workflow.Context) {
	c := r.cont
	c.st.Ended = true
	if c.st.Looking {
		c.st.Looking, c.st.Suspended = false, false
		r.fl.Resolved, r.fl.Token = true, ""
	}
	r.armLookTimer(ctx, time.Time{})
	r.logger.Info("continuous targeting ends: no more looks", "until", c.until, "looks", c.st.Looks, "found", c.st.Found)
	r.touch(ctx)
}

// armLookTimer makes the loop wake at at (no timer when zero), unless a timer for it is armed.
func (r *rollout) armLookTimer(ctx workflow.Context, at time.Time) {
	c := r.cont
	if c.cancelTimer != nil && c.timerAt.Equal(at) {
		return
	}
	if c.cancelTimer != nil {
		c.cancelTimer()
		c.cancelTimer, c.timerAt = nil, time.Time{}
	}
	if at.IsZero() {
		return
	}
	c.timerSeq++
	seq := c.timerSeq
	tctx, cancel := workflow.WithCancel(ctx)
	d := max(at.Sub(workflow.Now(ctx)), time.Millisecond)
	f := workflow.NewTimerWithOptions(tctx, d, workflow.TimerOptions{Summary: "next look for devices"})
	c.cancelTimer, c.timerAt = cancel, at
	workflow.Go(tctx, func(gctx workflow.Context) {
		if f.Get(gctx, nil) != nil {
			return
		}
		if c.timerSeq == seq {
			c.cancelTimer, c.timerAt = nil, time.Time{}
		}
		r.touch(gctx)
	})
}

// capLookWave keeps wave w, planned after the looks began, within MaxLookWave.
func (r *rollout) capLookWave(w int) {
	if r.cont != nil && r.cont.st.Looks > 0 && r.st.WaveSizes[w] > MaxLookWave {
		r.st.WaveSizes[w] = MaxLookWave
	}
}

// shardLook marks a shard started by a look.
func (r *rollout) shardLook() *ShardLook {
	if r.cont == nil || !r.cont.st.Looking {
		return nil
	}
	return &ShardLook{Look: r.cont.st.Looks, Since: r.st.Started.Add(-touchedSlack)}
}

// continuousProgress fills p's look figures; a rollout that completed at Until says so.
func (r *rollout) continuousProgress(p *RolloutProgress) {
	in := r.in.Continuous
	if in == nil {
		return
	}
	cp := &ContinuousProgress{Until: in.Until, Every: in.Every}
	if cp.Every == 0 {
		cp.Every = DefaultLookEvery
	}
	if c := r.cont; c != nil {
		cp.Looks, cp.Found, cp.LastLook, cp.Error, cp.Ended = c.st.Looks, c.st.Found, c.st.Last, c.st.Error, c.st.Ended
		switch {
		case c.st.Ended || p.Done():
		case r.st.Paused:
			cp.Waiting = "paused: no look until resumed"
		case c.st.Looking && !c.st.Suspended:
			cp.Waiting = fmt.Sprintf("look %d under way (its pages are read as the waves need devices)", c.st.Looks)
		case c.st.Looks == 0 && !r.firstTargetsDone():
			cp.Waiting = "the first look comes once the targets found at the start have finished"
		default:
			cp.NextLook = c.st.Next
		}
		if p.State == RolloutCompleted && c.st.Ended && p.Reason == "" {
			p.Reason = fmt.Sprintf("continuous until %s reached; %d %s found %d %s", in.Until.UTC().Format(time.RFC3339),
				c.st.Looks, pluralWord(c.st.Looks, "look", "looks"), c.st.Found, pluralDevices(c.st.Found))
		}
	}
	p.Continuous = cp
}

// pluralWord is one or many for n.
func pluralWord(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// truncate shortens s to n bytes and an ellipsis.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// markLookRows marks the rows of a look's shard with the look that found them.
func (s *shard) markLookRows() {
	if s.in.Look == nil {
		return
	}
	for i := range s.rows {
		s.rows[i].Look = s.in.Look.Look
	}
}

// withTouched adds to the read before a look's device's call the check that skips it when the read
// shows an update of this rollout (or any since it began), and the properties the check reads. A
// retry of the device in its shard (RetryFailed) follows its own first attempt, which the check
// would take for an earlier update: it goes without.
func (d *device) withTouched(rf *activities.ReadFirst) *activities.ReadFirst {
	if d.rollout.Look == nil || d.attempt > 1 {
		return rf
	}
	rf.Touched = &activities.Touched{
		IDProperty: protocol.PropFirmwareUpdateID,
		IDs:        rolloutUpdateIDs(d.rollout.Rollout),
		Since:      d.rollout.Look.Since.UTC().Format(time.RFC3339Nano),
		Stamps:     touchedStamps,
	}
	for _, st := range touchedStamps {
		if !slices.Contains(rf.Properties, st.Property) {
			rf.Properties = append(rf.Properties, st.Property)
		}
	}
	return rf
}
