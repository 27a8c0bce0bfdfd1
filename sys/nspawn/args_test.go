package nspawn

import (
	"slices"
	"testing"
)

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		want []string
	}{
		{"empty", Spec{}, nil},
		{"boot no bus", Spec{Directory: "/r/m", Machine: "m", Boot: true, NoRegister: true, NotifyReady: true, LinkJournal: "no"},
			[]string{"--directory=/r/m", "--machine=m", "--boot", "--register=no", "--keep-unit", "--notify-ready=yes", "--link-journal=no"}},
		{"fast", Spec{Directory: "/d", AsPID2: true, Command: []string{"sleep", "infinity"}},
			[]string{"--directory=/d", "--as-pid2", "--", "sleep", "infinity"}},
		{"binds", Spec{Binds: []Bind{{Host: "/a:b", Machine: "/c", ReadOnly: true}, {Host: "/x", Machine: "/y"}}},
			[]string{`--bind-ro=/a\:b:/c`, "--bind=/x:/y"}},
		{"network namespace", Spec{NetworkNamespacePath: "/run/x/netns", ResolvConf: "off"},
			[]string{"--resolv-conf=off", "--network-namespace-path=/run/x/netns"}},
		{"private users", Spec{PrivateUsers: "pick", PrivateUsersOwnership: "map", Binds: []Bind{{Host: "/c", Machine: "/cache", IDMap: true}, {Host: "/r", Machine: "/r", ReadOnly: true}}},
			[]string{"--private-users=pick", "--private-users-ownership=map", "--bind=/c:/cache:idmap", "--bind-ro=/r:/r"}},
		{"private network", Spec{PrivateNetwork: true}, []string{"--private-network"}},
		{"volatile", Spec{Volatile: "overlay", ReadOnly: true, SuppressSync: true},
			[]string{"--volatile=overlay", "--read-only", "--suppress-sync=yes"}},
	} {
		if got := Args(tc.spec); !slices.Equal(got, tc.want) {
			t.Errorf("%s: Args() = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseNotify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Notification
	}{
		{"STATUS=Container running.\nX_NSPAWN_LEADER_PID=123", Notification{Status: "Container running.", LeaderPID: 123}},
		{"READY=1", Notification{Ready: true}},
		{"READY=0\nSTOPPING=1", Notification{Stopping: true}},
		{"X_NSPAWN_LEADER_PID=1", Notification{}},
		{"X_NSPAWN_LEADER_PID=abc\ngarbage", Notification{}},
	} {
		if got := ParseNotify([]byte(tc.in)); got != tc.want {
			t.Errorf("ParseNotify(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{
		"systemd 252 (252.38-1~deb12u1)\n+PAM": 252,
		"systemd 256.1":                        256,
		"nonsense":                             0,
		"systemd x":                            0,
	} {
		if got := ParseVersion(in); got != want {
			t.Errorf("ParseVersion(%q) = %d, want %d", in, got, want)
		}
	}
}

func FuzzParseNotify(f *testing.F) {
	f.Add([]byte("READY=1\nX_NSPAWN_LEADER_PID=5"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n := ParseNotify(b); n.LeaderPID < 0 || n.LeaderPID == 1 {
			t.Fatalf("leader pid %d", n.LeaderPID)
		}
	})
}
