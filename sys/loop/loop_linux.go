package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// ErrNotAttached is returned when a loop device has no backing file.
var ErrNotAttached = errors.New("loop device not attached")

// Options change how a file is attached.
type Options struct {
	// ReadOnly makes the device read-only (LO_FLAGS_READ_ONLY).
	ReadOnly bool
	// AutoClear detaches the device when its last user closes it
	// (LO_FLAGS_AUTOCLEAR), as mount -o loop does. Keep Device open
	// until something else (a mount) holds the device, or it is gone at
	// once.
	AutoClear bool
}

// Device is an attached loop device, held open.
type Device struct {
	// Path is /dev/loopN.
	Path string
	// Number is N.
	Number int
	f      *os.File
}

// Close releases this handle on the device. It does not detach it,
// except that with AutoClear a device nobody else holds goes away.
func (d *Device) Close() error { return d.f.Close() }

// attempts bounds the retries when other processes keep taking the free
// device we were given; each retry asks /dev/loop-control again.
const attempts = 64

// Attach binds file to a free loop device and returns it, open.
func Attach(file string, o Options) (*Device, error) {
	flags := os.O_RDWR
	if o.ReadOnly {
		flags = os.O_RDONLY
	}
	back, err := os.OpenFile(file, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", file, err)
	}
	defer back.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", file, err)
	}
	defer ctl.Close()
	info := statusFor(file, o)
	for range attempts {
		n, err := ioctlRetry(func() (int, error) { return unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE) })
		if err != nil {
			return nil, fmt.Errorf("attach %s: LOOP_CTL_GET_FREE: %w", file, err)
		}
		dev, err := bind(n, back, flags, info)
		if errors.Is(err, unix.EBUSY) {
			continue // taken between GET_FREE and our bind: ask again
		}
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", file, err)
		}
		return dev, nil
	}
	return nil, fmt.Errorf("attach %s: every free loop device was taken by others %d times in a row: %w", file, attempts, unix.EBUSY)
}

// statusFor fills struct loop_info64 (linux/include/uapi/linux/loop.h,
// unix.LoopInfo64) for file: its flags and the name reported by
// LOOP_GET_STATUS64 (truncated to LO_NAME_SIZE, 64 bytes).
func statusFor(file string, o Options) unix.LoopInfo64 {
	var info unix.LoopInfo64
	if o.ReadOnly {
		info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if o.AutoClear {
		info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if abs, err := filepath.Abs(file); err == nil {
		file = abs
	}
	copy(info.File_name[:len(info.File_name)-1], file)
	return info
}

// bind opens /dev/loopN and binds back to it.
func bind(n int, back *os.File, flags int, info unix.LoopInfo64) (*Device, error) {
	path := "/dev/loop" + strconv.Itoa(n)
	f, err := openDevice(path, n, flags)
	if err != nil {
		return nil, err
	}
	// struct loop_config (linux/include/uapi/linux/loop.h, unix.LoopConfig):
	// the fd, the block size (0: default) and the loop_info64, in one ioctl,
	// so that no other process sees the device half configured.
	cfg := unix.LoopConfig{Fd: uint32(back.Fd()), Info: info}
	_, err = ioctlRetry(func() (int, error) { return 0, unix.IoctlLoopConfigure(int(f.Fd()), &cfg) })
	if err == nil {
		return &Device{Path: path, Number: n, f: f}, nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		f.Close()
		return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", path, err)
	}
	// Before Linux 5.8 there is no LOOP_CONFIGURE: set the fd, then the
	// status; undo the first when the second fails.
	if _, err := ioctlRetry(func() (int, error) { return 0, unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, int(back.Fd())) }); err != nil {
		f.Close()
		return nil, fmt.Errorf("LOOP_SET_FD %s: %w", path, err)
	}
	if _, err := ioctlRetry(func() (int, error) { return 0, unix.IoctlLoopSetStatus64(int(f.Fd()), &info) }); err != nil {
		_, _ = ioctlRetry(func() (int, error) { return 0, unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0) })
		f.Close()
		return nil, fmt.Errorf("LOOP_SET_STATUS64 %s: %w", path, err)
	}
	return &Device{Path: path, Number: n, f: f}, nil
}

// openDevice opens /dev/loopN, making the node when /dev is not a devtmpfs
// that the kernel fills (some containers): loop devices are block major 7.
func openDevice(path string, n, flags int) (*os.File, error) {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if merr := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); merr != nil && !errors.Is(merr, unix.EEXIST) {
			return nil, fmt.Errorf("open %s: %w (mknod: %v)", path, err, merr)
		}
		f, err = os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

// Detach unbinds the loop device at path from its file (LOOP_CLR_FD). A
// device still in use (mounted) is detached by the kernel once its last
// user is gone. A device that is not attached is not an error.
func Detach(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	defer f.Close()
	_, err = ioctlRetry(func() (int, error) { return 0, unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0) })
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	return nil
}

// BackingFile returns the file behind the loop device at path, in full from
// sysfs (/sys/block/loopN/loop/backing_file), else as LOOP_GET_STATUS64
// reports it (at most 63 bytes). It returns ErrNotAttached for a free
// device.
func BackingFile(path string) (string, error) {
	name := filepath.Base(path)
	if data, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file")); err == nil {
		return strings.TrimSuffix(string(data), "\n"), nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("backing file of %s: %w", path, err)
	}
	defer f.Close()
	var info *unix.LoopInfo64
	_, err = ioctlRetry(func() (int, error) {
		var e error
		info, e = unix.IoctlLoopGetStatus64(int(f.Fd()))
		return 0, e
	})
	if errors.Is(err, unix.ENXIO) {
		return "", fmt.Errorf("backing file of %s: %w", path, ErrNotAttached)
	}
	if err != nil {
		return "", fmt.Errorf("backing file of %s: LOOP_GET_STATUS64: %w", path, err)
	}
	b := info.File_name[:]
	if i := indexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b), nil
}

// Find returns the loop devices whose backing file is file (as losetup -j).
func Find(file string) ([]string, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("find loop devices of %s: %w", file, err)
	}
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("find loop devices of %s: %w", file, err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		if strings.TrimSuffix(string(data), "\n") == abs {
			out = append(out, "/dev/"+e.Name())
		}
	}
	return out, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// ioctlRetry retries an ioctl interrupted by a signal.
func ioctlRetry(f func() (int, error)) (int, error) {
	return eintr.Retry1(f)
}
