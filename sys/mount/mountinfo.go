package mount

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Info is one line of /proc/PID/mountinfo (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
type Info struct {
	ID         int    // (1) mount ID
	Parent     int    // (2) parent mount ID
	Major      int    // (3) st_dev major of files on this filesystem
	Minor      int    // (3) st_dev minor
	Root       string // (4) the directory of the filesystem that is mounted
	Mountpoint string // (5) where it is mounted, relative to the process root
	Options    string // (6) per-mount options
	Optional   string // (7) optional fields such as "shared:1 master:2", space separated
	Fstype     string // (9) filesystem type, "type.subtype" for FUSE
	Source     string // (10) filesystem-specific source, or "none"
	VFSOptions string // (11) per-superblock options
}

// ParseMountinfo parses the mountinfo format of proc(5). Paths and the
// other free-text fields are decoded from the kernel's octal escapes
// (\040 space, \011 tab, \012 newline, \134 backslash).
func ParseMountinfo(r io.Reader) ([]Info, error) {
	sc := bufio.NewScanner(r)
	// Overlay option strings alone may take a page; allow long lines.
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var out []Info
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if line == "" {
			continue
		}
		in, err := parseMountinfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, in)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

func parseMountinfoLine(line string) (Info, error) {
	var in Info
	f := strings.Split(line, " ")
	if len(f) < 10 {
		return in, fmt.Errorf("%d fields, want at least 10: %q", len(f), line)
	}
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 {
		return in, fmt.Errorf("no \" - \" separator: %q", line)
	}
	if len(f)-sep-1 != 3 {
		return in, fmt.Errorf("%d fields after the separator, want 3: %q", len(f)-sep-1, line)
	}
	var err error
	if in.ID, err = strconv.Atoi(f[0]); err != nil {
		return in, fmt.Errorf("mount ID %q: %w", f[0], err)
	}
	if in.Parent, err = strconv.Atoi(f[1]); err != nil {
		return in, fmt.Errorf("parent ID %q: %w", f[1], err)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return in, fmt.Errorf("major:minor %q", f[2])
	}
	if in.Major, err = strconv.Atoi(maj); err != nil {
		return in, fmt.Errorf("major %q: %w", maj, err)
	}
	if in.Minor, err = strconv.Atoi(min); err != nil {
		return in, fmt.Errorf("minor %q: %w", min, err)
	}
	in.Root = unescape(f[3])
	in.Mountpoint = unescape(f[4])
	in.Options = f[5]
	in.Optional = strings.Join(f[6:sep], " ")
	in.Fstype = unescape(f[sep+1])
	in.Source = unescape(f[sep+2])
	in.VFSOptions = unescape(f[sep+3])
	return in, nil
}

// unescape decodes the \ooo octal escapes with which the kernel's mangle()
// (fs/proc_namespace.c) writes space, tab, newline and backslash. Anything
// that is not a valid three-digit octal escape is kept as it is.
func unescape(s string) string {
	i := strings.IndexByte(s, '\\')
	if i < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) && s[i+1] <= '3' {
			b = append(b, (s[i+1]-'0')<<6|(s[i+2]-'0')<<3|(s[i+3]-'0'))
			i += 3
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// Below returns the mount points in infos at or below prefix (a clean
// absolute path), in the order to unmount them: deepest first and, for
// mounts stacked on one point, the most recent (listed last) first.
func Below(infos []Info, prefix string) []string {
	type cand struct {
		path  string
		depth int
		idx   int
	}
	var c []cand
	for i, in := range infos {
		if isBelow(in.Mountpoint, prefix) {
			c = append(c, cand{in.Mountpoint, strings.Count(in.Mountpoint, "/"), i})
		}
	}
	slices.SortFunc(c, func(a, b cand) int {
		if a.depth != b.depth {
			return b.depth - a.depth
		}
		return b.idx - a.idx
	})
	out := make([]string, len(c))
	for i, x := range c {
		out[i] = x.path
	}
	return out
}

func isBelow(path, prefix string) bool {
	if prefix == "/" {
		return strings.HasPrefix(path, "/")
	}
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}
