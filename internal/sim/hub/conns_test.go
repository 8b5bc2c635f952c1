package hub

import "testing"

func TestTopicMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", true},
		{"$iothub/methods/POST/#", "$iothub/methods/POST", true}, // # matches the parent level
		{"$iothub/methods/POST/+/#", "$iothub/methods/POST/reboot/?$rid=1", true},
		{"$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", true},
		{"$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=2", false},
		{"$iothub/twin/PATCH/properties/desired/#", "$iothub/twin/PATCH/properties/desired/?$version=2", true},
		{"#", "$iothub/methods/POST/m/?$rid=1", false}, // wildcards do not reach $ topics
		{"+/methods/POST/#", "$iothub/methods/POST/m/?$rid=1", false},
		{"devices/d1/messages/devicebound/#", "devices/d1/messages/devicebound/x", true},
		{"devices/+/messages/devicebound/#", "devices/d1/messages/devicebound/x", true},
		{"devices/d1/messages/devicebound/#", "devices/d2/messages/devicebound/x", false},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/", true},
	}
	for _, tc := range tests {
		t.Run(tc.filter+" "+tc.topic, func(t *testing.T) {
			if got := topicMatches(tc.filter, tc.topic); got != tc.want {
				t.Errorf("topicMatches(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
			}
		})
	}
}
