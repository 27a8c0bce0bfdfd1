package provision

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// copyCached copies the cached test image to dst (which must not exist,
// or be an empty directory or subvolume), reflinking where it can.
func copyCached(t *testing.T, dst string) {
	t.Helper()
	src := testutil.Image(t)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "cp", "-a", "--reflink=auto", src+"/.", dst+"/")
}

func writePlaybook(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func requireAnsible(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "ansible-playbook")
	testutil.RequireBinary(t, "systemd-nspawn")
}

func TestRunPlaybook(t *testing.T) {
	requireAnsible(t)
	tree := filepath.Join(t.TempDir(), "tree")
	copyCached(t, tree)
	dir := t.TempDir()
	pb := writePlaybook(t, dir, "img.yaml", `- hosts: all
  gather_facts: true
  tasks:
    - name: write a marker
      copy:
        dest: /etc/nrt-pv-marker
        content: "{{ ansible_distribution_release }}\n"
    - name: run a command
      command: touch /var/nrt-pv-command
`)
	var out bytes.Buffer
	r := Runner{Output: &out, TempDir: t.TempDir(), CgroupParent: testCgroupParent(t)}
	h, cgErr := cgroup.Detect()
	rootGroups := func() {}
	if cgErr == nil {
		rootGroups = testutil.NspawnRootGroups(t, h.Root)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := r.Run(ctx, Target{Name: "img", Tree: tree, Playbook: pb, Machine: "nrt-pv-run"}); err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	// The run had a cgroup of its own, gone with the payload/ and
	// supervisor/ groups each task's systemd-nspawn made in it.
	if cgErr == nil && !nspawn.HasSystemd() {
		if kids, err := h.Children(r.CgroupParent); err != nil || len(kids) != 0 {
			t.Errorf("cgroups left below %s: %v, %v", r.CgroupParent, kids, err)
		}
		rootGroups()
	}
	got, err := os.ReadFile(filepath.Join(tree, "etc/nrt-pv-marker"))
	if err != nil || string(got) != "bookworm\n" {
		t.Errorf("marker = %q, %v; want bookworm", got, err)
	}
	if _, err := os.Stat(filepath.Join(tree, "var/nrt-pv-command")); err != nil {
		t.Errorf("command did not run: %v", err)
	}
	for _, p := range []string{"root/.ansible", "run/nspawn-runner-ansible", "tmp/.ansible"} {
		if _, err := os.Stat(filepath.Join(tree, p)); err == nil {
			t.Errorf("ansible left %s in the image", p)
		}
	}
	if !strings.Contains(out.String(), "TASK [write a marker]") {
		t.Errorf("output lacks the task lines:\n%s", out.String())
	}
}

func TestRunPlaybookFails(t *testing.T) {
	requireAnsible(t)
	tree := filepath.Join(t.TempDir(), "tree")
	copyCached(t, tree)
	dir := t.TempDir()
	pb := writePlaybook(t, dir, "img.yml", `- hosts: all
  gather_facts: false
  tasks:
    - name: ignored failure
      command: /bin/false
      ignore_errors: true
    - name: this one breaks
      shell: echo broken-on-purpose >&2; exit 3
    - name: never runs
      command: touch /never
`)
	var out bytes.Buffer
	r := Runner{Output: &out, TempDir: t.TempDir(), CgroupParent: testCgroupParent(t)}
	err := r.Run(context.Background(), Target{Name: "img", Tree: tree, Playbook: pb, Machine: "nrt-pv-fail"})
	var pe *PlaybookError
	if !errors.As(err, &pe) {
		t.Fatalf("Run = %v, want a *PlaybookError\n%s", err, out.String())
	}
	if pe.Task != "this one breaks" || !strings.Contains(pe.Msg, "broken-on-purpose") {
		t.Errorf("Run error = %q (task %q, msg %q), want task %q with its stderr", err, pe.Task, pe.Msg, "this one breaks")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("Run error does not wrap the exit status: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tree, "never")); err == nil {
		t.Errorf("the task after the failure ran")
	}
}
