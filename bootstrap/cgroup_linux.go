package bootstrap

import (
	"cmp"
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// ownCgroupTimeout bounds the kill and removal of such a group, also after
// a cancel.
const ownCgroupTimeout = 30 * time.Second

// OwnCgroup starts cmd (systemd-nspawn --keep-unit, or a program that
// starts it, as ansible-playbook does) in a cgroup of its own,
// PARENT/name below the cgroup v2 root (parent "" is
// config.DefaultCgroupParent), on hosts without systemd: there nspawn makes
// its payload/ and supervisor/ groups in the cgroup it runs in and never
// removes them. On a systemd host, or when the group cannot be made (no
// cgroup v2: a warning says so), cmd is left alone. Call the returned
// function once cmd has ended: it kills what is left in the group and
// removes it, with its own time budget even when ctx was cancelled.
// chroot-login and the playbook runs of provision share it.
func OwnCgroup(ctx context.Context, log *slog.Logger, cmd *exec.Cmd, parent, name string) (release func()) {
	if nspawn.HasSystemd() {
		return func() {}
	}
	log = logx.OrDiscard(log)
	rel := filepath.Join(cmp.Or(parent, config.DefaultCgroupParent), name)
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
