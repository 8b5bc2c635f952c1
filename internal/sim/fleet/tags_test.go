package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want []TagRule
		err  string
	}{
		{name: "empty", in: ""},
		{name: "ring", in: "ring=beta:10%,ring=prod", want: []TagRule{
			{Path: []string{"ring"}, Value: "beta", Percent: 10},
			{Path: []string{"ring"}, Value: "prod", All: true},
		}},
		{name: "nested", in: " site.city=Oslo ", want: []TagRule{{Path: []string{"site", "city"}, Value: "Oslo", All: true}}},
		{name: "fraction percent", in: "a=b:2.5%", want: []TagRule{{Path: []string{"a"}, Value: "b", Percent: 2.5}}},
		{name: "colon in value", in: "t=10:30", want: []TagRule{{Path: []string{"t"}, Value: "10:30", All: true}}},
		{name: "no equals", in: "ring", err: "has no '='"},
		{name: "no value", in: "ring=", err: "has no value"},
		{name: "no value with percent", in: "ring=:10%", err: "has no value"},
		{name: "empty key", in: "=x", err: "has the key"},
		{name: "empty segment", in: "a..b=x", err: "has the key"},
		{name: "dollar", in: "$a=x", err: "has the key"},
		{name: "zero percent", in: "a=b:0%", err: "percentage"},
		{name: "over 100", in: "a=b:101%", err: "percentage"},
		{name: "not a number", in: "a=b:x%", err: "percentage"},
		{name: "trailing comma", in: "a=b,", err: "has no '='"},
		{name: "nested conflict", in: "site=x,site.city=Oslo", err: "nest one key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseTags(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				assert.Contains(t, err.Error(), "use", "the error names the fix")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestPlanTags(t *testing.T) {
	t.Parallel()
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = DeviceID("dev-", i+1, len(ids))
	}
	rules, err := ParseTags("ring=canary:5%,ring=beta:10%,ring=prod,site.city=Oslo:50%,site.country=NO")
	require.NoError(t, err)
	plan := PlanTags(ids, 7, rules)
	assert.Equal(t, plan, PlanTags(ids, 7, rules), "same seed, same tags")
	assert.NotEqual(t, plan, PlanTags(ids, 8, rules), "another seed, other tags")

	rings := map[string]int{}
	cities := 0
	for _, id := range ids {
		tags := plan[id]
		require.NotNil(t, tags, id)
		rings[tags["ring"].(string)]++
		site := tags["site"].(map[string]any)
		assert.Equal(t, "NO", site["country"])
		if site["city"] == "Oslo" {
			cities++
		}
	}
	assert.Equal(t, map[string]int{"canary": 10, "beta": 20, "prod": 170}, rings)
	assert.Equal(t, 100, cities)

	// Percentages alone leave the rest untagged.
	only, err := ParseTags("ring=beta:10%")
	require.NoError(t, err)
	assert.Len(t, PlanTags(ids, 7, only), 20)
	// Adding a key leaves the other keys' assignment alone.
	ringOnly, err := ParseTags("ring=canary:5%,ring=beta:10%,ring=prod")
	require.NoError(t, err)
	for id, tags := range PlanTags(ids, 7, ringOnly) {
		assert.Equal(t, plan[id]["ring"], tags["ring"], id)
	}
}

func FuzzParseTags(f *testing.F) {
	for _, s := range []string{"ring=beta:10%,ring=prod", "site.city=Oslo", "a=b:2.5%", "=", "a..b=c", "a=:%", "x=y,x.z=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := ParseTags(s)
		if err != nil {
			return
		}
		ids := []string{"a", "b", "c", "d"}
		plan := PlanTags(ids, 1, rules)
		for _, r := range rules {
			if r.Value == "" || len(r.Path) == 0 || (!r.All && !(r.Percent > 0 && r.Percent <= 100)) {
				t.Fatalf("ParseTags(%q) gave the rule %+v", s, r)
			}
		}
		if len(plan) > len(ids) {
			t.Fatalf("plan of %d devices for %d", len(plan), len(ids))
		}
	})
}

// A small fleet against localhub gets its tags, and a second run with the
// same flags leaves them as they were.
func TestFleetTags(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	rules, err := ParseTags("ring=beta:20%,ring=prod,site.city=Oslo")
	require.NoError(t, err)
	run := func() []Member {
		f, err := New(Config{
			Count: 10, Prefix: "tag-", Seed: 3, Tags: rules,
			Faults:  Faults{Offline: 1}, // tags need no connection
			Service: h.service, CAFile: h.CACertFile(), Brokers: []string{"tls://" + h.MQTTAddr()},
		})
		require.NoError(t, err)
		runUntilReady(t, f, 30*time.Second)()
		return f.Members()
	}
	check := func(members []Member) {
		ids := make([]string, len(members))
		for i, m := range members {
			ids[i] = m.ID
		}
		plan := PlanTags(ids, 3, rules)
		beta := 0
		for _, id := range ids {
			tw, err := h.svc.GetDeviceTwin(context.Background(), id)
			require.NoError(t, err, id)
			assert.Equal(t, plan[id]["ring"], tw.Tags["ring"], id)
			assert.Equal(t, map[string]any{"city": "Oslo"}, tw.Tags["site"], id)
			if tw.Tags["ring"] == "beta" {
				beta++
			}
		}
		assert.Equal(t, 2, beta)
	}
	check(run())
	check(run())
}
