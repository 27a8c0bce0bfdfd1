package cgroup

import "syscall"

func sysProcAttrInto(fd int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
}
