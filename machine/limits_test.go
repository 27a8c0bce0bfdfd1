package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
)

// Lines as the machines' systemd logged them when 48 booted at once on a
// host with fs.inotify.max_user_instances = 128.
const stalledBoot = `Spawning container nr-17-3f2a9c1d0b4e on /var/lib/nspawn-runner/.machines/nr-17-3f2a9c1d0b4e/root.
Press ^] three times within 1s to kill container.
systemd 252.38-1~deb12u1 running in system mode (+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT default-hierarchy=unified)
Detected virtualization systemd-nspawn.
Failed to create inotify object: Too many open files
Failed to allocate manager object: Too many open files
[!!!!!!] Failed to allocate manager object.
`

func TestDetectLimit(t *testing.T) {
	for _, tc := range []struct {
		log, limit string
	}{
		{stalledBoot, "fs.inotify.max_user_instances"},
		{"systemd-journald[23]: Failed to add inotify watch on /run/log: No space left on device\n", "fs.inotify.max_user_watches"},
		{"Out of kernel keyrings to allocate, ignoring.\n", "kernel.keys.maxkeys"},
		{"Failed to set up session keyring: Disk quota exceeded\n", "kernel.keys.maxkeys"},
		{"Spawning container x on /y.\nsystemd 252 running in system mode\nReached target multi-user.target\n", ""},
		{"Too many open files\n", ""}, // not inotify: not a sysctl we set
		{"", ""},
	} {
		got := DetectLimit([]byte(tc.log))
		if tc.limit == "" {
			if got != nil {
				t.Errorf("DetectLimit(%q) = %+v, want nil", tc.log, got)
			}
			continue
		}
		if got == nil || got.Limit != tc.limit || strings.ContainsRune(got.Line, '\n') {
			t.Errorf("DetectLimit(%q) = %+v, want limit %s on one line", tc.log, got, tc.limit)
			continue
		}
		if msg := got.Error(); !strings.Contains(msg, tc.limit) || !strings.Contains(msg, "nspawn-runner setup") {
			t.Errorf("error %q names neither the limit nor the fix", msg)
		}
	}
}

// The log grows while watched; a line split over two writes is judged
// whole.
func TestWatchLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nspawn.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := &Manager{Config: config.Machine{ReadyTimeout: config.Duration(time.Hour)}}
	ctx, stop := m.readyContext(context.Background(), path)
	defer stop()
	fmt.Fprint(f, "Spawning container x.\nFailed to create inotify ob")
	time.Sleep(2 * limitPoll)
	if ctx.Err() != nil {
		t.Fatalf("cancelled on half a line: %v", context.Cause(ctx))
	}
	fmt.Fprint(f, "ject: Too many open files\n")
	<-ctx.Done()
	err = limitCause(ctx, ctx.Err())
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != "fs.inotify.max_user_instances" {
		t.Fatalf("cause = %v, want the inotify instances limit", err)
	}
}

// volatileImages serves one directory as every image.
type volatileImages struct{ dir string }

func (v volatileImages) Path(string) (string, error) { return v.dir, nil }
func (volatileImages) Retired() ([]string, error)    { return nil, nil }
func (volatileImages) RemoveTree(string) error       { return nil }

// A machine whose systemd says a host limit ran out fails prepare at once
// with a line naming the limit, instead of waiting out ready_timeout. The
// host's limits are not lowered (other tests run machines at the same
// time): a stand-in systemd-nspawn logs the line a stalled boot logs and
// then never becomes ready, as the real one does.
func TestPrepareFailsOnExhaustedLimit(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := cgroup.Detect(); err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "systemd-nspawn")
	script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'systemd 252 (252.38-1~deb12u1)'; exit 0; fi\n" +
		"echo 'Spawning container on /x.'\necho 'Failed to create inotify object: Too many open files'\nexec sleep 600\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "image")
	if err := os.Mkdir(image, 0o755); err != nil {
		t.Fatal(err)
	}
	parent := fmt.Sprintf("nspawn-runner-test-ops-limit-%d", os.Getpid())
	m := &Manager{
		Root: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run"), Images: volatileImages{image},
		NamePrefix: "ops-", CgroupParent: parent, Nspawn: fake,
		Config: config.Machine{Mode: config.ModeBoot, Storage: StorageVolatile, ReadyTimeout: config.Duration(3 * time.Minute), StopTimeout: config.Duration(5 * time.Second)},
	}
	t.Cleanup(func() {
		if h, err := cgroup.Detect(); err == nil {
			_ = h.Kill(context.Background(), parent)
			_ = h.Remove(parent)
		}
	})
	_, err := m.Prepare(context.Background(), PrepareRequest{JobID: "1", Key: "0123456789abcdef", Image: "x"})
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != "fs.inotify.max_user_instances" {
		t.Fatalf("Prepare = %v, want a LimitError naming fs.inotify.max_user_instances", err)
	}
	if !strings.Contains(err.Error(), "host limit fs.inotify.max_user_instances is exhausted") {
		t.Errorf("error %q does not say which limit", err)
	}
	// The failed prepare left nothing: no record, no run dir, no cgroup.
	ents, _ := os.ReadDir(filepath.Join(m.RunDir, "machines"))
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if h, err := cgroup.Detect(); err == nil {
		name, _ := m.Name("1", "0123456789abcdef")
		if l := m.layout(name); h.Exists(l.Cgroup) {
			t.Errorf("cgroup %s left behind", l.Cgroup)
		}
	}
}
