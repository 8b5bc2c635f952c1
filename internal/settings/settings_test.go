package settings

import "testing"

func TestPick(t *testing.T) {
	env := map[string]string{"SET": "from-env", "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		name, flag, env, def, want string
	}{
		{"flag wins", "from-flag", "SET", "d", "from-flag"},
		{"env over default", "", "SET", "d", "from-env"},
		{"empty env is unset", "", "EMPTY", "d", "d"},
		{"default", "", "UNSET", "d", "d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Pick(getenv, tc.flag, tc.env, tc.def); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
