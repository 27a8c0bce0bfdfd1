package bootstrap

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// ownCgroupTimeout bounds the kill and removal of such a group, also after
// a cancel.
const ownCgroupTimeout = 30 * time.Second

// What an image's own cgroup is for: its name is
// PARENT/image-WHAT-NAME@ROOT (CgroupName).
const (
	CgroupLogin    = "login"
	CgroupPlaybook = "playbook"
)

var cgroupPurposes = []string{CgroupLogin, CgroupPlaybook}

// rootTag tells apart images of the same name in two roots (two runners
// on one host, or test roots) whose groups share a parent: 8 hex digits
// of the SHA-256 of the root's absolute path. '@' is in no image name.
func rootTag(root string) string {
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	sum := sha256.Sum256([]byte(filepath.Clean(root)))
	return hex.EncodeToString(sum[:4])
}

// CgroupName is the cgroup, relative to the v2 root, of image's chroot-login
// or playbook run (what) in the image root: PARENT/image-WHAT-NAME@TAG,
// parent "" meaning config.DefaultCgroupParent.
func CgroupName(parent, root, image, what string) string {
	return filepath.Join(cmp.Or(parent, config.DefaultCgroupParent), "image-"+what+"-"+image+"@"+rootTag(root))
}

// OwnCgroup starts cmd (systemd-nspawn --keep-unit, or a program that
// starts it, as ansible-playbook does) in a cgroup of its own,
// CgroupName(parent, root, image, what), on hosts without systemd: there nspawn makes
// its payload/ and supervisor/ groups in the cgroup it runs in and never
// removes them. The caller holds image's lock: a group of that name is
// then a leftover of a killed run, killed and removed first. On a systemd
// host, or when the group cannot be made (no cgroup v2: a warning says
// so), cmd is left alone. Call the returned function once cmd has ended:
// it kills what is left in the group and removes it, with its own time
// budget even when ctx was cancelled. When nspawn-runner is killed before
// that, the next OwnCgroup of the image, or CleanWorkspaces (create,
// maintenance, remove, gc) once the image's lock is free, removes it.
// chroot-login and the playbook runs of provision share it.
func OwnCgroup(ctx context.Context, log *slog.Logger, cmd *exec.Cmd, parent, root, image, what string) (release func()) {
	if nspawn.HasSystemd() {
		return func() {}
	}
	log = logx.OrDiscard(log)
	rel := CgroupName(parent, root, image, what)
	if err := removeCgroup(ctx, rel); err != nil {
		log.Warn("removing the cgroup a killed run left", "cgroup", rel, "err", err)
	}
	grp, err := cgroup.Start(cmd, rel)
	if err != nil {
		log.Warn("no cgroup of its own for systemd-nspawn: its payload/ and supervisor/ groups stay where we run", "cgroup", rel, "err", err)
		return func() {}
	}
	return func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ownCgroupTimeout)
		defer cancel()
		if err := grp.Close(cctx); err != nil {
			log.Warn("removing the cgroup of systemd-nspawn", "cgroup", rel, "err", err)
		}
	}
}

// removeCgroup kills what runs in the group rel and removes it with its
// descendants; a missing group or hierarchy is not an error.
func removeCgroup(ctx context.Context, rel string) error {
	h, err := cgroup.Detect()
	if err != nil || !h.Exists(rel) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ownCgroupTimeout)
	defer cancel()
	if err := h.Kill(ctx, rel); err != nil {
		return err
	}
	return h.Remove(rel)
}

// staleCgroups lists the own groups of this root's images below the
// parent, by image: those tagged with this root, and untagged ones
// (PARENT/image-WHAT-NAME, as versions before the tag named them). Another
// root's groups are its own business.
func (s *Store) staleCgroups() (map[string][]string, error) {
	if nspawn.HasSystemd() {
		return nil, nil
	}
	h, err := cgroup.Detect()
	if err != nil {
		return nil, nil
	}
	parent := cmp.Or(s.CgroupParent, config.DefaultCgroupParent)
	kids, err := h.Children(parent)
	if err != nil {
		return nil, fmt.Errorf("list cgroups of images: %w", err)
	}
	out := map[string][]string{}
	tag := rootTag(s.Root)
	for _, k := range kids {
		for _, what := range cgroupPurposes {
			rest, ok := strings.CutPrefix(k, "image-"+what+"-")
			if !ok {
				continue
			}
			image, t, tagged := strings.Cut(rest, "@")
			if (!tagged || t == tag) && config.CheckImageName(image) == nil {
				out[image] = append(out[image], filepath.Join(parent, k))
			}
		}
	}
	return out, nil
}

// removeStaleCgroups removes the groups of image, whose lock the caller
// holds.
func removeStaleCgroups(ctx context.Context, log *slog.Logger, groups []string) error {
	var errs []error
	for _, rel := range groups {
		log.Info("removing a cgroup left by a killed chroot-login or playbook run", "cgroup", rel)
		if err := removeCgroup(ctx, rel); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", rel, err))
		}
	}
	return errors.Join(errs...)
}
