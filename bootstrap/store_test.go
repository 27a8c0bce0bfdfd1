package bootstrap_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// filesystems runs f on a store on a loopback btrfs and on a plain
// directory (ext4 or whatever the temporary directory is on).
func filesystems(t *testing.T, f func(t *testing.T, s *bootstrap.Store, kind string)) {
	t.Run("btrfs", func(t *testing.T) {
		mnt := testutil.NewBtrfs(t, 3<<30)
		f(t, &bootstrap.Store{Root: filepath.Join(mnt, "images"), LoginPrefix: "nrt-im-", CgroupParent: testutil.CgroupParent(t, "nrt-im-cg-")}, bootstrap.KindSubvolume)
	})
	t.Run("directory", func(t *testing.T) {
		testutil.RequireRoot(t)
		root := filepath.Join(t.TempDir(), "images")
		if ok, _ := btrfs.IsBtrfs(filepath.Dir(root)); ok {
			t.Skip("the temporary directory is on btrfs")
		}
		f(t, &bootstrap.Store{Root: root, LoginPrefix: "nrt-im-", CgroupParent: testutil.CgroupParent(t, "nrt-im-cg-")}, bootstrap.KindDirectory)
	})
}

// installImage puts a copy of the cached test image into s as name, the
// way maintenance builds one aside: Workspace, fill, Install.
func installImage(t *testing.T, s *bootstrap.Store, name string) string {
	t.Helper()
	src := testutil.Image(t)
	unlock, err := s.Lock(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ws, err := s.Workspace(name)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "cp", "-a", "--reflink=auto", src+"/.", ws+"/")
	if err := s.Install(name, ws); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(s.Root, name)
}

// smallImage installs a tiny tree holding the file "gen".
func smallImage(t *testing.T, s *bootstrap.Store, name, gen string) string {
	t.Helper()
	ws := smallWorkspace(t, s, name, gen)
	if err := s.Install(name, ws); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(s.Root, name)
}

func smallWorkspace(t *testing.T, s *bootstrap.Store, name, gen string) string {
	t.Helper()
	ws, err := s.Workspace(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "gen"), []byte(gen), 0o644); err != nil {
		t.Fatal(err)
	}
	return ws
}

// entries lists the root, hidden entries included.
func entries(t *testing.T, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestListKindSize(t *testing.T) {
	filesystems(t, func(t *testing.T, s *bootstrap.Store, kind string) {
		installImage(t, s, "bookworm")
		smallImage(t, s, "tiny", "1")
		// Internal entries are never listed.
		if _, err := s.Workspace("other"); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(s.Root, ".retired-x-1"), 0o755); err != nil {
			t.Fatal(err)
		}
		imgs, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, im := range imgs {
			names = append(names, im.Name)
			if im.Kind != kind {
				t.Errorf("List: %s kind = %q, want %q", im.Name, im.Kind, kind)
			}
			if im.Path != filepath.Join(s.Root, im.Name) || im.Created.IsZero() {
				t.Errorf("List: %+v: want its path and a creation time", im)
			}
		}
		if !slices.Equal(names, []string{"bookworm", "tiny"}) {
			t.Fatalf("List names = %q, want [bookworm tiny]", names)
		}
		if imgs[0].Size < 100<<20 || imgs[1].Size > 1<<20 {
			t.Errorf("List sizes = %d, %d: want the Debian tree over 100 MiB and the tiny one under 1 MiB", imgs[0].Size, imgs[1].Size)
		}
		if err := s.WriteMeta("tiny", bootstrap.Meta{Maintained: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		imgs, _ = s.List()
		if !imgs[1].Maintained.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("Maintained = %v after WriteMeta", imgs[1].Maintained)
		}
	})
}

func TestPathNotFound(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	_, err := s.Path("bookworm")
	var nf *bootstrap.NotFoundError
	if !errors.Is(err, bootstrap.ErrNotFound) || !errors.As(err, &nf) || len(nf.Available) != 0 || strings.Contains(err.Error(), "nspawn-runner") {
		t.Errorf("Path in an empty root = %v", err)
	}
	smallImage(t, s, "b", "1")
	smallImage(t, s, "a", "1")
	_, err = s.Path("bookworm")
	if !errors.Is(err, bootstrap.ErrNotFound) || !strings.Contains(err.Error(), `image "bookworm" not found in `+s.Root+"; available: a, b") {
		t.Errorf("Path(missing) = %v", err)
	}
}

func TestHostileNames(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"../../etc", ".hidden", "a/b", "..", "a\x01b", "a\nb", "", "-x", strings.Repeat("a", 65), ".lock", ".tmp-x-1"} {
		errs := map[string]error{}
		_, errs["Path"] = s.Path(name)
		errs["Create"] = s.Create(ctx, name, bootstrap.CreateOptions{Suite: "bookworm"})
		_, errs["Retire"] = s.Retire(ctx, name)
		errs["Login"] = s.Login(ctx, name, []string{"true"})
		_, errs["Workspace"] = s.Workspace(name)
		_, errs["Lock"] = s.Lock(ctx, name)
		for op, err := range errs {
			if err == nil || !strings.Contains(err.Error(), config.ImageNameRule) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s(%q) = %v, want a one-line error naming the rule", op, name, err)
			}
		}
	}
	if e := entries(t, s.Root); len(e) != 0 {
		t.Errorf("hostile names created %q", e)
	}
}

func TestInstallExists(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	smallImage(t, s, "a", "1")
	ws := smallWorkspace(t, s, "a", "2")
	if err := s.Install("a", ws); !errors.Is(err, bootstrap.ErrExists) {
		t.Errorf("Install over an existing image = %v, want ErrExists", err)
	}
	if err := s.Install("b", "/etc"); err == nil {
		t.Errorf("Install of a path that is no workspace succeeded")
	}
	if err := s.Create(context.Background(), "a", bootstrap.CreateOptions{Suite: "bookworm"}); !errors.Is(err, bootstrap.ErrExists) {
		t.Errorf("Create of an existing image = %v, want ErrExists", err)
	}
}

// A reader looking at the image in a loop while it is replaced again and
// again never finds it missing or empty.
func TestReplaceAtomic(t *testing.T) {
	filesystems(t, func(t *testing.T, s *bootstrap.Store, kind string) {
		img := smallImage(t, s, "img", "0")
		var stop atomic.Bool
		var reads, misses atomic.Int64
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				for !stop.Load() {
					if _, err := os.ReadFile(filepath.Join(img, "gen")); err != nil {
						misses.Add(1)
					}
					reads.Add(1)
				}
			})
		}
		const n = 100
		for i := 1; i <= n; i++ {
			ws := smallWorkspace(t, s, "img", fmt.Sprint(i))
			retired, err := s.Replace("img", ws)
			if err != nil {
				t.Fatal(err)
			}
			if gen, err := os.ReadFile(filepath.Join(retired, "gen")); err != nil || string(gen) != fmt.Sprint(i-1) {
				t.Fatalf("retired tree %s holds %q, %v, want %d", retired, gen, err, i-1)
			}
		}
		stop.Store(true)
		wg.Wait()
		if misses.Load() != 0 {
			t.Errorf("%d of %d reads found no image during Replace", misses.Load(), reads.Load())
		}
		if gen, _ := os.ReadFile(filepath.Join(img, "gen")); string(gen) != fmt.Sprint(n) {
			t.Errorf("image holds generation %q, want %d", gen, n)
		}
		retired, err := s.Retired()
		if err != nil || len(retired) != n {
			t.Fatalf("Retired() = %d trees, %v, want %d", len(retired), err, n)
		}
		for _, r := range retired {
			if err := s.RemoveTree(r); err != nil {
				t.Fatal(err)
			}
		}
		if r, _ := s.Retired(); len(r) != 0 {
			t.Errorf("Retired() after RemoveTree = %q", r)
		}
		// Replace of a missing image installs it.
		ws := smallWorkspace(t, s, "new", "x")
		if r, err := s.Replace("new", ws); err != nil || r != "" {
			t.Errorf("Replace(missing) = %q, %v, want an install", r, err)
		}
	})
}

func TestRemoveTreeRefusesOutside(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	s := &bootstrap.Store{Root: filepath.Join(dir, "images")}
	smallImage(t, s, "a", "1")
	for _, p := range []string{dir, s.Root, filepath.Join(s.Root, "a", "gen"), filepath.Join(s.Root, "..", "x"), "/"} {
		if err := s.RemoveTree(p); err == nil {
			t.Errorf("RemoveTree(%s) succeeded", p)
		}
	}
	if _, err := s.Path("a"); err != nil {
		t.Errorf("image gone after refused removals: %v", err)
	}
	// A symlink in the root is removed, not followed.
	target := filepath.Join(dir, "target")
	if err := os.MkdirAll(filepath.Join(target, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(s.Root, ".retired-link-1")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveTree(link); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(target, "sub")); err != nil {
		t.Errorf("RemoveTree followed a symlink: %v", err)
	}
	if _, err := os.Lstat(link); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("symlink still there: %v", err)
	}
}

func TestRemove(t *testing.T) {
	filesystems(t, func(t *testing.T, s *bootstrap.Store, kind string) {
		img := installImage(t, s, "bookworm")
		if kind == bootstrap.KindSubvolume {
			// systemd makes subvolumes inside images (/var/lib/machines):
			// a nested one must not stop the removal.
			if err := btrfs.Create(filepath.Join(img, "var", "lib", "nested")); err != nil {
				t.Fatal(err)
			}
		}
		// Something mounted inside (a login that was killed) is unmounted.
		proc := filepath.Join(img, "proc")
		if err := unix.Mount("proc", proc, "proc", 0, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(proc, unix.MNT_DETACH) })
		if err := s.WriteMeta("bookworm", bootstrap.Meta{Suite: "bookworm"}); err != nil {
			t.Fatal(err)
		}
		retired, err := s.Retire(context.Background(), "bookworm")
		if err != nil {
			t.Fatal(err)
		}
		if e := entries(t, filepath.Join(s.Root, ".meta")); len(e) != 0 {
			t.Errorf("Retire left metadata %q", e)
		}
		if r, err := s.Retired(); err != nil || !slices.Equal(r, []string{retired}) {
			t.Errorf("Retired() = %q, %v, want [%s]", r, err, retired)
		}
		if err := s.RemoveTree(retired); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries(t, s.Root) {
			if e != ".lock" && e != ".meta" {
				t.Errorf("Retire and RemoveTree left %s", e)
			}
		}
		if _, err := s.Retire(context.Background(), "bookworm"); !errors.Is(err, bootstrap.ErrNotFound) {
			t.Errorf("second Retire = %v, want ErrNotFound", err)
		}
	})
}

func TestLockWaits(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: t.TempDir()}
	unlock, err := s.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock of a held lock = %v, want the context's error", err)
	}
	// Other images are not serialised with it.
	u2, err := s.Lock(context.Background(), "b")
	if err != nil {
		t.Fatal(err)
	}
	u2()
	got := make(chan error, 1)
	go func() {
		u, err := s.Lock(context.Background(), "a")
		if err == nil {
			u()
		}
		got <- err
	}()
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("Lock after unlock = %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Lock still waiting a minute after unlock")
	}
}

// A workspace whose lock is held is someone's build in progress: cleaning
// leaves it alone; once the holder is gone it is removed, with what was
// mounted in it.
func TestCleanWorkspaces(t *testing.T) {
	filesystems(t, func(t *testing.T, s *bootstrap.Store, kind string) {
		unlock, err := s.Lock(context.Background(), "busy")
		if err != nil {
			t.Fatal(err)
		}
		busy, err := s.Workspace("busy")
		if err != nil {
			t.Fatal(err)
		}
		stale, err := s.Workspace("stale")
		if err != nil {
			t.Fatal(err)
		}
		mnt := filepath.Join(stale, "proc")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
		if err := s.CleanWorkspaces(context.Background(), ""); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(busy); err != nil {
			t.Errorf("the workspace of a held lock was removed: %v", err)
		}
		if _, err := os.Lstat(stale); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale workspace still there: %v", err)
		}
		unlock()
		if err := s.CleanWorkspaces(context.Background(), ""); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(busy); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("workspace of a released lock still there after CleanWorkspaces: %v", err)
		}
	})
}

// chroot-list only reads: a workspace that looks stale (its lock is free)
// and the process working in it survive List. Cleaning is for create,
// remove, maintenance and gc, which decide to.
func TestListOnlyReads(t *testing.T) {
	testutil.RequireRoot(t)
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	smallImage(t, s, "a", "1")
	ws, err := s.Workspace("stale")
	if err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "600")
	sleep.Dir = ws
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = sleep.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = sleep.Process.Kill()
		<-exited
	})
	imgs, err := s.List()
	if err != nil || len(imgs) != 1 || imgs[0].Name != "a" {
		t.Fatalf("List = %+v, %v, want image a", imgs, err)
	}
	if _, err := os.Stat(ws); err != nil {
		t.Errorf("List removed the workspace %s: %v", ws, err)
	}
	// A SIGKILL is delivered at once, but Wait learns of it a little
	// later: give it a moment before calling the process alive.
	select {
	case <-exited:
		t.Errorf("List killed the process working in %s", ws)
	case <-time.After(500 * time.Millisecond):
	}
}

func TestLogin(t *testing.T) {
	testutil.RequireBinary(t, "systemd-nspawn")
	filesystems(t, func(t *testing.T, s *bootstrap.Store, kind string) {
		img := installImage(t, s, "bookworm")
		ctx := context.Background()
		h, cgErr := cgroup.Detect()
		rootGroups := func() {}
		if cgErr == nil {
			rootGroups = testutil.NspawnRootGroups(t, h.Root)
		}
		s.CgroupParent = "nrt-im-login-" + kind
		t.Cleanup(func() { _ = h.Remove(s.CgroupParent) })
		// Not ephemeral: what the command writes stays in the image.
		if err := s.Login(ctx, "bookworm", []string{"sh", "-c", "cat /etc/debian_version > /root/version"}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(img, "root", "version"))
		want, _ := os.ReadFile(filepath.Join(img, "etc", "debian_version"))
		if err != nil || string(got) != string(want) || !strings.HasPrefix(string(got), "12.") {
			t.Errorf("debian_version through Login = %q, %v, want %q", got, err, want)
		}
		var ee *bootstrap.ExitError
		if err := s.Login(ctx, "bookworm", []string{"sh", "-c", "exit 42"}); !errors.As(err, &ee) || ee.Code != 42 {
			t.Errorf("Login(exit 42) = %v, want ExitError 42", err)
		}
		if err := s.Login(ctx, "nope", []string{"true"}); !errors.Is(err, bootstrap.ErrNotFound) {
			t.Errorf("Login(missing) = %v, want ErrNotFound", err)
		}
		// Each login had a cgroup of its own, gone with what nspawn made
		// in it; nothing landed in the cgroup we run in.
		if cgErr == nil && !nspawn.HasSystemd() {
			if kids, err := h.Children(s.CgroupParent); err != nil || len(kids) != 0 {
				t.Errorf("cgroups left below %s: %v, %v", s.CgroupParent, kids, err)
			}
			rootGroups()
		}
	})
}

// Cancelling a create (what SIGTERM and SIGINT do) stops debootstrap and
// removes its workspace before Create returns.
func TestCreateCancel(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "debootstrap")
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go func() {
		buf := make([]byte, 4096)
		var seen strings.Builder
		for {
			n, err := pr.Read(buf)
			seen.Write(buf[:n])
			if strings.Contains(seen.String(), "debootstrap: retrieving packages") || err != nil {
				cancel()
				return
			}
		}
	}()
	err = s.Create(ctx, "img", bootstrap.CreateOptions{Suite: "bookworm", Progress: pw})
	pw.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Create = %v, want context.Canceled", err)
	}
	for _, e := range entries(t, s.Root) {
		if e != ".lock" {
			t.Errorf("cancelled Create left %s", e)
		}
	}
	out, _ := exec.Command("pgrep", "-f", "debootstrap.*"+s.Root).Output()
	if len(out) > 0 {
		t.Errorf("debootstrap still running after a cancelled Create: %s", out)
	}
}

// The one test that runs a whole real debootstrap through Store.Create (the
// cached test image and the integration test run it too), on btrfs.
func TestCreate(t *testing.T) {
	testutil.RequireBinary(t, "debootstrap")
	mnt := testutil.NewBtrfs(t, 3<<30)
	s := &bootstrap.Store{Root: filepath.Join(mnt, "images")}
	var progress strings.Builder
	o := bootstrap.CreateOptions{Suite: "bookworm", Packages: []string{"less"}, Progress: &progress}
	if err := s.Create(context.Background(), "bookworm", o); err != nil {
		t.Fatal(err)
	}
	t.Logf("progress:\n%s", progress.String())
	for _, phase := range []string{"retrieving packages", "extracting packages", "installing core packages", "unpacking the base system", "configuring the base system", "base system installed"} {
		if !strings.Contains(progress.String(), "debootstrap: "+phase+"\n") {
			t.Errorf("progress lacks the phase %q", phase)
		}
	}
	img, err := s.Path("bookworm")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := btrfs.IsSubvolume(img); err != nil || !ok {
		t.Errorf("IsSubvolume(%s) = %v, %v: an image on btrfs must be a subvolume", img, ok, err)
	}
	for _, p := range []string{"usr/bin/less", "usr/bin/git", "usr/bin/python3", "usr/lib/systemd/systemd", "etc/debian_version"} {
		if _, err := os.Stat(filepath.Join(img, p)); err != nil {
			t.Errorf("image lacks %s: %v", p, err)
		}
	}
	m, err := s.ReadMeta("bookworm")
	if err != nil || m.Suite != "bookworm" || m.Created.IsZero() || !slices.Contains(m.Packages, "less") {
		t.Errorf("ReadMeta = %+v, %v", m, err)
	}
	if e := entries(t, s.Root); !slices.Equal(e, []string{".lock", ".meta", "bookworm"}) {
		t.Errorf("root after Create holds %q", e)
	}
}

// A failing debootstrap: the error carries the command line and the tail of
// its output, and Create leaves nothing behind.
func TestCreateFails(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "debootstrap")
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images")}
	err := s.Create(context.Background(), "img", bootstrap.CreateOptions{Suite: "nosuchsuite"})
	if err == nil || !strings.Contains(err.Error(), "debootstrap --variant=minbase") || !strings.Contains(err.Error(), "nosuchsuite") || !strings.Contains(err.Error(), "E: ") {
		t.Errorf("Create(nosuchsuite) = %v, want the command line and debootstrap's error", err)
	}
	for _, e := range entries(t, s.Root) {
		if e != ".lock" {
			t.Errorf("failed Create left %s", e)
		}
	}
	unlock, err := s.Lock(context.Background(), "img")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ws, err := s.Workspace("img")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Debootstrap(context.Background(), ws, bootstrap.CreateOptions{Suite: "nosuchsuite"}); err == nil {
		t.Errorf("Debootstrap(nosuchsuite) succeeded")
	}
	if err := s.Debootstrap(context.Background(), "/tmp", bootstrap.CreateOptions{Suite: "bookworm"}); err == nil {
		t.Errorf("Debootstrap into a path that is no workspace succeeded")
	}
	if err := s.RemoveTree(ws); err != nil {
		t.Fatal(err)
	}
}

// A chroot-login or playbook run killed with nspawn-runner leaves its
// cgroup (OwnCgroup) and what runs in it: CleanWorkspaces, which gc and
// the next create or maintenance call, kills and removes it once the
// image's lock is free, and leaves it while the lock is held.
func TestCleanWorkspacesStaleCgroups(t *testing.T) {
	testutil.RequireRoot(t)
	if nspawn.HasSystemd() {
		t.Skip("on a systemd host systemd-nspawn gets its scope from systemd: no cgroups of our own")
	}
	h, err := cgroup.Detect()
	if err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	s := &bootstrap.Store{Root: filepath.Join(t.TempDir(), "images"), CgroupParent: "nrt-ops-stale-" + strconv.Itoa(os.Getpid())}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.Kill(context.Background(), s.CgroupParent)
		_ = h.Remove(s.CgroupParent)
	})
	// What a killed run leaves: its group, nspawn's payload/ inside it, a
	// process still running there.
	start := func(image, what string) (string, *exec.Cmd) {
		rel := bootstrap.CgroupName(s.CgroupParent, s.Root, image, what)
		cmd := exec.Command("sleep", "600")
		release := bootstrap.OwnCgroup(context.Background(), nil, cmd, s.CgroupParent, s.Root, image, what)
		_ = release // never called: the run was killed
		if !h.Exists(rel) {
			t.Fatalf("OwnCgroup made no group %s", rel)
		}
		if _, err := h.Create(filepath.Join(rel, "payload"), nil); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		return rel, cmd
	}
	freeRel, freeCmd := start("free", bootstrap.CgroupPlaybook)
	busyRel, _ := start("busy", bootstrap.CgroupLogin)
	// A run of an image of the same name in another root (another
	// runner on this host, with the same cgroup parent) is not ours: it
	// goes on. One named as before roots were told apart is ours.
	other := filepath.Join(t.TempDir(), "other-root")
	otherRel := bootstrap.CgroupName(s.CgroupParent, other, "free", bootstrap.CgroupPlaybook)
	if otherRel == freeRel {
		t.Fatalf("two roots share the cgroup name %s", otherRel)
	}
	otherCmd := exec.Command("sleep", "600")
	_ = bootstrap.OwnCgroup(context.Background(), nil, otherCmd, s.CgroupParent, other, "free", bootstrap.CgroupPlaybook)
	if err := otherCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { otherCmd.Process.Kill(); otherCmd.Wait() })
	legacyRel := filepath.Join(s.CgroupParent, "image-playbook-free")
	if _, err := h.Create(legacyRel, nil); err != nil {
		t.Fatal(err)
	}
	// A login or maintenance of "busy" runs: it holds the lock (flock(2)
	// locks belong to the open file, so CleanWorkspaces' own TryLock finds
	// it busy, in this process too).
	unlock, err := s.TryLock("busy")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()

	if err := s.CleanWorkspaces(context.Background(), ""); err != nil {
		t.Fatalf("CleanWorkspaces = %v", err)
	}
	if h.Exists(freeRel) {
		t.Errorf("the cgroup %s of an image whose lock is free is still there", freeRel)
	}
	if h.Exists(legacyRel) {
		t.Errorf("the untagged cgroup %s of an image whose lock is free is still there", legacyRel)
	}
	if !h.Exists(otherRel) {
		t.Errorf("the cgroup %s of another root's image was removed", otherRel)
	} else if st, err := os.ReadFile("/proc/" + strconv.Itoa(otherCmd.Process.Pid) + "/stat"); err != nil || strings.Contains(string(st), ") Z ") {
		t.Errorf("the process in another root's cgroup %s was killed (%v)", otherRel, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- freeCmd.Wait() }()
	select {
	case err := <-waited:
		if err == nil {
			t.Errorf("the process in %s exited 0, want killed", freeRel)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the process in %s was not killed", freeRel)
	}
	if !h.Exists(busyRel) {
		t.Errorf("the cgroup %s of an image in use was removed", busyRel)
	}

	// The holder (a login, a maintenance) starts its own run: the stale
	// group of the same name is replaced, not joined.
	if err := s.CleanWorkspaces(context.Background(), "busy"); err != nil {
		t.Fatalf("CleanWorkspaces(held busy) = %v", err)
	}
	if h.Exists(busyRel) {
		t.Errorf("the cgroup %s of the held image is still there", busyRel)
	}
}
