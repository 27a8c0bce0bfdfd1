package treecopy

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// maxChunk bounds one copy_file_range(2) or sendfile(2) call, so that a
// stopped copy (cancelled, or failed elsewhere) does not first finish a
// large file.
const maxChunk = 128 << 20

// errStopped ends a file's data copy when the whole copy stops; the error
// that stopped it is what Copy returns.
var errStopped = errors.New("copy stopped")

// copyData copies the bytes of src to dst: copy_file_range(2) in the
// kernel, read/write where that is not supported. A sparse file (fewer
// blocks than its size) is copied extent by extent with SEEK_DATA and
// SEEK_HOLE so that its holes stay holes.
func (w *worker) copyData(src, dst int, st *unix.Stat_t) (int64, error) {
	size := st.Size
	if st.Blocks*512 >= size {
		return w.copyRange(src, dst, 0, size)
	}
	var total int64
	var off int64
	for off < size {
		data, err := unix.Seek(src, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA support: copy everything.
			n, err := w.copyRange(src, dst, off, size-off)
			return total + n, err
		}
		hole, err := unix.Seek(src, data, unix.SEEK_HOLE)
		if err != nil {
			return total, err
		}
		n, err := w.copyRange(src, dst, data, hole-data)
		total += n
		if err != nil {
			return total, err
		}
		off = hole
	}
	if err := unix.Ftruncate(dst, size); err != nil {
		return total, err
	}
	return total, nil
}

// copyRange copies n bytes at off from src to dst at the same offset.
func (w *worker) copyRange(src, dst int, off, n int64) (int64, error) {
	roff, woff := off, off
	end := off + n
	for roff < end {
		if w.c.failed.Load() {
			return roff - off, errStopped
		}
		chunk := min(end-roff, maxChunk)
		m, err := eintr.Retry1(func() (int, error) { return unix.CopyFileRange(src, &roff, dst, &woff, int(chunk), 0) })
		if err != nil {
			switch err {
			case unix.EXDEV, unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL:
				// Different filesystem types (Linux 5.19 and later) or no
				// support: sendfile(2) still copies inside the kernel.
				k, err := w.sendfile(src, dst, roff, end-roff)
				return roff - off + k, err
			}
			return roff - off, err
		}
		if m == 0 {
			break // the file shrank meanwhile
		}
	}
	return roff - off, nil
}

// sendfile copies n bytes at off with sendfile(2), falling back to
// read/write where it cannot.
func (w *worker) sendfile(src, dst int, off, n int64) (int64, error) {
	if _, err := unix.Seek(dst, off, unix.SEEK_SET); err != nil {
		return 0, err
	}
	roff, end := off, off+n
	for roff < end {
		if w.c.failed.Load() {
			return roff - off, errStopped
		}
		chunk := min(end-roff, maxChunk)
		m, err := eintr.Retry1(func() (int, error) { return unix.Sendfile(dst, src, &roff, int(chunk)) })
		// EAGAIN only comes with O_NONBLOCK on a descriptor that can
		// block (sendfile(2)); should one ever be here, read/write
		// copies it instead of spinning.
		if err == unix.EINVAL || err == unix.ENOSYS || err == unix.EAGAIN {
			k, err := w.readWrite(src, dst, roff, end-roff)
			return roff - off + k, err
		}
		if err != nil {
			return roff - off, err
		}
		if m == 0 {
			break
		}
	}
	return roff - off, nil
}

func (w *worker) readWrite(src, dst int, off, n int64) (int64, error) {
	var done int64
	for done < n {
		if w.c.failed.Load() {
			return done, errStopped
		}
		want := int64(len(w.buf))
		if n-done < want {
			want = n - done
		}
		r, err := eintr.Retry1(func() (int, error) { return unix.Pread(src, w.buf[:want], off+done) })
		if err != nil {
			return done, err
		}
		if r == 0 {
			break
		}
		for p := 0; p < r; {
			k, err := eintr.Retry1(func() (int, error) { return unix.Pwrite(dst, w.buf[p:r], off+done+int64(p)) })
			if err != nil {
				return done, err
			}
			p += k
		}
		done += int64(r)
	}
	return done, nil
}
