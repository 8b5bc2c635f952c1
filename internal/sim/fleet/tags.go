package fleet

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/amenzhinsky/iothub/iotservice"
)

// TagsForm is the form ParseTags accepts, for error messages.
const TagsForm = "key=value[:N%],… e.g. ring=beta:10%,ring=prod,site.city=Oslo"

// TagRule is one item of a tag list: set the tag Path (nested keys, from
// "site.city") to Value on Percent of the devices not yet tagged for that
// key, or on all of them when All is set.
type TagRule struct {
	Path    []string
	Value   string
	Percent float64
	All     bool
}

// Key is the rule's dotted key.
func (r TagRule) Key() string { return strings.Join(r.Path, ".") }

// ParseTags parses a comma-separated list of key=value[:N%] items (see
// TagsForm). Keys are dotted paths of tag names; one key must not be a
// prefix of another, since a tag is either a value or an object.
func ParseTags(s string) ([]TagRule, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var rules []TagRule
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		key, value, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("tag %q has no '=': use %s", item, TagsForm)
		}
		r := TagRule{All: true}
		if i := strings.LastIndexByte(value, ':'); i >= 0 && strings.HasSuffix(value, "%") {
			p, err := strconv.ParseFloat(value[i+1:len(value)-1], 64)
			if err != nil || !(p > 0 && p <= 100) {
				return nil, fmt.Errorf("tag %q has the percentage %q: use a number above 0 and at most 100, e.g. %s:10%%", item, value[i+1:], key+"="+value[:i])
			}
			r.Percent, r.All, value = p, false, value[:i]
		}
		if value == "" {
			return nil, fmt.Errorf("tag %q has no value: use %s", item, TagsForm)
		}
		if strings.ContainsAny(value, "=%") {
			return nil, fmt.Errorf("tag %q has '=' or '%%' in its value: use %s", item, TagsForm)
		}
		for _, name := range strings.Split(key, ".") {
			if name == "" || strings.ContainsAny(name, "$# \t:%") {
				return nil, fmt.Errorf("tag %q has the key %q: use dot-separated names without spaces, '$', '#', ':' or '%%', e.g. site.city", item, key)
			}
		}
		r.Path, r.Value = strings.Split(key, "."), value
		for _, o := range rules {
			if k, ok := o.Key(), r.Key(); k != ok && (strings.HasPrefix(k, ok+".") || strings.HasPrefix(ok, k+".")) {
				return nil, fmt.Errorf("tags %q and %q nest one key in the other: a tag is either a value or an object, so use only one of them", o.Key(), r.Key())
			}
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// PlanTags gives each device its tags: per key, the devices are shuffled
// by seed and the key, and the rules of that key take their share in
// order, round(N% × len(ids)) devices each (at most those left), or all
// that are left. The same ids, seed and rules give the same tags. Devices
// without tags are not in the result.
func PlanTags(ids []string, seed int64, rules []TagRule) map[string]map[string]any {
	type keyState struct {
		perm []int
		next int
	}
	keys := map[string]*keyState{}
	plan := map[string]map[string]any{}
	for _, r := range rules {
		ks := keys[r.Key()]
		if ks == nil {
			h := fnv.New64a()
			h.Write([]byte(r.Key()))
			rng := rand.New(rand.NewPCG(uint64(seed), h.Sum64()))
			ks = &keyState{perm: rng.Perm(len(ids))}
			keys[r.Key()] = ks
		}
		left := len(ids) - ks.next
		n := left
		if !r.All {
			n = min(left, int(math.Round(r.Percent/100*float64(len(ids)))))
		}
		for _, i := range ks.perm[ks.next : ks.next+n] {
			tags := plan[ids[i]]
			if tags == nil {
				tags = map[string]any{}
				plan[ids[i]] = tags
			}
			setPath(tags, r.Path, r.Value)
		}
		ks.next += n
	}
	return plan
}

func setPath(m map[string]any, path []string, v string) {
	for _, name := range path[:len(path)-1] {
		sub, ok := m[name].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[name] = sub
		}
		m = sub
	}
	m[path[len(path)-1]] = v
}

// ApplyTags merges each device's planned tags into its twin (PATCH with
// If-Match *; the tags are absolute values, so it is idempotent), concurrency twins at a time.
// Throttling (429) and server errors are retried with backoff, as in
// Register.
func ApplyTags(ctx context.Context, svc *iotservice.Client, plan map[string]map[string]any, concurrency int, log *slog.Logger) error {
	if len(plan) == 0 {
		return nil
	}
	start := time.Now()
	concurrency = max(concurrency, 1)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	ids := make(chan string)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				err := retry(ctx, func() error {
					// An empty ETag sends If-Match *: the client quotes any
					// other value, "*" included, which then names an etag.
					_, err := svc.UpdateDeviceTwin(ctx, &iotservice.Twin{DeviceID: id, Tags: plan[id]})
					return err
				})
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("tag device %s: %w", id, err); cancel() })
				}
			}
		}()
	}
feed:
	for id := range plan {
		select {
		case ids <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(ids)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return firstErr
	}
	log.Info("fleet tagged", "devices", len(plan), "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}
