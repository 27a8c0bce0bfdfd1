package provision

import (
	"slices"
	"strings"
	"testing"
)

func TestTracker(t *testing.T) {
	for _, tc := range []struct {
		name, out, task, msg string
	}{
		{name: "success", out: "PLAY [all] ***\nTASK [a] ***\nok: [img]\nPLAY RECAP ***\n"},
		{
			name: "fatal",
			out:  "TASK [Gathering Facts] ***\nok: [img]\nTASK [install git] ***\nfatal: [img]: FAILED! => {\"changed\": false, \"msg\": \"No package matching 'gti' is available\"}\nPLAY RECAP ***\n",
			task: "install git", msg: "No package matching 'gti' is available",
		},
		{
			name: "command stderr and rc",
			out:  "TASK [run] ***\nfatal: [img]: FAILED! => {\"rc\": 3, \"stderr\": \"one\\ntwo\\n\", \"msg\": \"non-zero return code\"}\n",
			task: "run", msg: "non-zero return code: rc=3: two",
		},
		{
			name: "ignored then fatal",
			out:  "TASK [may fail] ***\nfatal: [img]: FAILED! => {\"msg\": \"x\"}\n...ignoring\nTASK [must work] ***\nfatal: [img]: FAILED! => {\"msg\": \"y\"}\n",
			task: "must work", msg: "y",
		},
		{
			name: "ignored only",
			out:  "TASK [may fail] ***\nfatal: [img]: FAILED! => {\"msg\": \"x\"}\n...ignoring\nTASK [next] ***\nok: [img]\n",
		},
		{
			name: "loop items",
			out:  "TASK [pkgs] ***\nok: [img] => (item=a)\nfailed: [img] (item=b) => {\"msg\": \"item b broke\"}\nfatal: [img]: FAILED! => {\"msg\": \"One or more items failed\"}\nPLAY RECAP ***\n",
			task: "pkgs", msg: "item b broke",
		},
		{
			name: "handler",
			out:  "RUNNING HANDLER [restart thing] ***\nfatal: [img]: FAILED! => {\"msg\": \"nope\"}\n",
			task: "restart thing", msg: "nope",
		},
		{
			name: "brackets in name",
			out:  "TASK [role : set [x] up] ***\nfatal: [img]: FAILED! => not json\n",
			task: "role : set [x] up", msg: "not json",
		},
		{
			name: "unreachable",
			out:  "TASK [Gathering Facts] ***\nfatal: [img]: UNREACHABLE! => {\"changed\": false, \"msg\": \"dir missing\", \"unreachable\": true}\n",
			task: "Gathering Facts", msg: "dir missing",
		},
		{
			name: "syntax error",
			out:  "ERROR! conflicting action statements: copy, command\n\nThe error appears to be in '/x.yaml': line 4, column 7\nmore\nmore\nmore\n",
			msg:  "ERROR! conflicting action statements: copy, command The error appears to be in '/x.yaml': line 4, column 7 more more",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr tracker
			for _, l := range strings.Split(tc.out, "\n") {
				tr.feed(l)
			}
			task, msg := tr.result()
			if task != tc.task || msg != tc.msg {
				t.Errorf("result() = %q, %q; want %q, %q", task, msg, tc.task, tc.msg)
			}
		})
	}
}

func TestPlaybookErrorMessage(t *testing.T) {
	e := &PlaybookError{Playbook: "/etc/nspawn-runner/x.yaml", Task: "install", Msg: "boom"}
	if got, want := e.Error(), `playbook /etc/nspawn-runner/x.yaml failed at task "install": boom`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	long := resultMsg("fatal: [x]: FAILED! => {\"msg\": \"" + strings.Repeat("a", 1000) + "\"}")
	if len(long) > maxMsg+3 {
		t.Errorf("resultMsg is not shortened: %d bytes", len(long))
	}
}

// TestMachineName: every image name (up to 64 characters) gives a valid
// machine name of at most 63 (it used to give 64).
func TestMachineName(t *testing.T) {
	for in, want := range map[string]string{
		"bookworm":              "nspawn-runner-maint-bookworm",
		"a.b_c+d":               "nspawn-runner-maint-a-b-c-d",
		strings.Repeat("x", 64): "nspawn-runner-maint-" + strings.Repeat("x", 43),
		"x+":                    "nspawn-runner-maint-x",
	} {
		if got, err := MachineName("", in); err != nil || got != want {
			t.Errorf("MachineName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if got, err := MachineName("nrt-pv-", "a.b"); err != nil || got != "nrt-pv-a-b" {
		t.Errorf("MachineName(nrt-pv-, a.b) = %q, %v", got, err)
	}
}

func TestWrapper(t *testing.T) {
	args := Wrapper{Tree: "/var/lib/nspawn-runner/.tmp-x-1", Machine: "m", Remote: "/tmp/r", NspawnVersion: 252}.Args()
	for _, a := range []string{"--directory=/var/lib/nspawn-runner/.tmp-x-1", "--machine=m", "--register=no", "--keep-unit", "--quiet", "--console=pipe", "--resolv-conf=copy-host", "--as-pid2", "--bind=/tmp/r:" + RemoteTemp, "--suppress-sync=yes"} {
		if !slices.Contains(args, a) {
			t.Errorf("WrapperArgs = %q, lacks %q", args, a)
		}
	}
	for _, a := range args {
		if a == "--ephemeral" || a == "--boot" || a == "--" {
			t.Errorf("WrapperArgs = %q, has %q", args, a)
		}
	}
	old := Wrapper{Tree: "/r", Remote: "/tmp/r", NspawnVersion: 247}.Args()
	if slices.Contains(old, "--suppress-sync=yes") {
		t.Errorf("Args for systemd 247 = %q: --suppress-sync needs 250", old)
	}
	w := Wrapper{Nspawn: "/usr/bin/systemd-nspawn", Tree: "/r/it's", Machine: "m", Remote: "/tmp/r"}.Script()
	for _, s := range []string{"#!/bin/sh\n", `if [ "$1" != '/r/it'\''s' ]`, "exec '/usr/bin/systemd-nspawn' '--quiet'", `'--directory=/r/it'\''s'`, ` -- "$@"` + "\n"} {
		if !strings.Contains(w, s) {
			t.Errorf("Wrapper lacks %q:\n%s", s, w)
		}
	}
}

func TestInventory(t *testing.T) {
	got := Inventory("img", "/r/a b", "/t/w")
	want := "img ansible_connection=chroot ansible_host='/r/a b' ansible_chroot_exe='/t/w' ansible_python_interpreter=/usr/bin/python3\n"
	if got != want {
		t.Errorf("Inventory = %q, want %q", got, want)
	}
}

func TestAnsibleEnv(t *testing.T) {
	env := ansibleEnv([]string{"PATH=/bin", "ANSIBLE_CONFIG=/home/x/a.cfg", "ANSIBLE_ROLES_PATH=/x", "HOME=/root", "LC_ALL=C", "LANG=POSIX"}, "/tmp/d", "/tmp/d/ansible.cfg")
	// ansible-core refuses a locale that is not UTF-8 (a timer's, or
	// LC_ALL=C from a script): the caller's is replaced.
	for _, e := range env {
		if strings.HasPrefix(e, "LC_ALL=") && e != "LC_ALL=C.UTF-8" || strings.HasPrefix(e, "LANG=") && e != "LANG=C.UTF-8" {
			t.Errorf("ansibleEnv kept the caller's locale %s", e)
		}
	}
	if !slices.Contains(env, "LC_ALL=C.UTF-8") {
		t.Errorf("ansibleEnv sets no UTF-8 locale: %q", env)
	}
	if !slices.Contains(env, "PATH=/bin") || !slices.Contains(env, "HOME=/root") {
		t.Errorf("ansibleEnv dropped the environment: %q", env)
	}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		if strings.HasPrefix(k, "ANSIBLE_") && strings.HasSuffix(k, "_DIR") || k == "ANSIBLE_HOME" || k == "ANSIBLE_LOCAL_TEMP" || k == "ANSIBLE_CONFIG" {
			if !strings.HasPrefix(v, "/tmp/d/") {
				t.Errorf("ansibleEnv: %s outside the run directory", e)
			}
		}
		if e == "ANSIBLE_ROLES_PATH=/x" || e == "ANSIBLE_CONFIG=/home/x/a.cfg" {
			t.Errorf("ansibleEnv kept the caller's %s", e)
		}
	}
}
