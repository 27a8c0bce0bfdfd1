package cgroup

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// Group is a cgroup made for one command: the command starts in it
// (clone3 CLONE_INTO_CGROUP via SysProcAttr.CgroupFD), and Close kills
// whatever is left in it and removes it with every group made below it.
//
// systemd-nspawn run with --keep-unit and no systemd creates its payload/
// and supervisor/ groups inside the cgroup it runs in and never removes
// them; started in a Group of its own, they go with the Group.
type Group struct {
	h   Hierarchy
	rel string
	f   *os.File
}

// Start creates the group rel (relative to the root) and sets cmd to
// start in it. It returns ErrNoCgroup2 (and leaves cmd alone) when the
// host has no cgroup v2 hierarchy.
func Start(cmd *exec.Cmd, rel string) (*Group, error) {
	h, err := Detect()
	if err != nil {
		return nil, err
	}
	if _, err := h.Create(rel, nil); err != nil {
		return nil, err
	}
	f, err := h.Open(rel)
	if err != nil {
		_ = h.Remove(rel)
		return nil, err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(f.Fd())
	return &Group{h: h, rel: rel, f: f}, nil
}

// Close kills what is left in the group, then removes it and its
// descendants. It is safe to call on a nil Group.
func (g *Group) Close(ctx context.Context) error {
	if g == nil {
		return nil
	}
	g.f.Close()
	if err := g.h.Kill(ctx, g.rel); err != nil {
		return fmt.Errorf("close cgroup %s: %w", g.rel, err)
	}
	return g.h.Remove(g.rel)
}
