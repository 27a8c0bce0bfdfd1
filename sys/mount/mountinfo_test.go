package mount

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []Info
	}{
		{
			name: "proc(5) example",
			in:   "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
			want: []Info{{ID: 36, Parent: 35, Major: 98, Minor: 0, Root: "/mnt1", Mountpoint: "/mnt2", Options: "rw,noatime",
				Optional: "master:1", Fstype: "ext3", Source: "/dev/root", VFSOptions: "rw,errors=continue"}},
		},
		{
			name: "no optional fields",
			in:   "22 27 0:21 / /proc rw,relatime - proc proc rw",
			want: []Info{{ID: 22, Parent: 27, Major: 0, Minor: 21, Root: "/", Mountpoint: "/proc", Options: "rw,relatime",
				Fstype: "proc", Source: "proc", VFSOptions: "rw"}},
		},
		{
			name: "several optional fields",
			in:   "1 0 8:1 / / rw shared:1 master:2 propagate_from:3 unbindable - ext4 /dev/sda1 rw",
			want: []Info{{ID: 1, Parent: 0, Major: 8, Minor: 1, Root: "/", Mountpoint: "/", Options: "rw",
				Optional: "shared:1 master:2 propagate_from:3 unbindable", Fstype: "ext4", Source: "/dev/sda1", VFSOptions: "rw"}},
		},
		{
			name: "octal escapes",
			in:   `40 1 0:50 /a\134b /tmp/with\040space\011tab\012nl rw - fuse.my\040fs src\040x rw,opt=a\040b`,
			want: []Info{{ID: 40, Parent: 1, Major: 0, Minor: 50, Root: `/a\b`, Mountpoint: "/tmp/with space\ttab\nnl", Options: "rw",
				Fstype: "fuse.my fs", Source: "src x", VFSOptions: "rw,opt=a b"}},
		},
		{
			name: "empty source",
			in:   "41 1 0:51 / /x rw -  tmpfs  rw",
			want: nil, // 4 fields after the separator
		},
		{
			name: "source empty string",
			in:   "41 1 0:51 / /x rw - tmpfs  rw",
			want: []Info{{ID: 41, Parent: 1, Minor: 51, Root: "/", Mountpoint: "/x", Options: "rw", Fstype: "tmpfs", VFSOptions: "rw"}},
		},
		{
			name: "blank lines and several entries",
			in:   "\n1 0 0:1 / / rw - rootfs rootfs rw\n\n2 1 0:2 / /sys rw - sysfs sysfs rw\n",
			want: []Info{
				{ID: 1, Minor: 1, Root: "/", Mountpoint: "/", Options: "rw", Fstype: "rootfs", Source: "rootfs", VFSOptions: "rw"},
				{ID: 2, Parent: 1, Minor: 2, Root: "/", Mountpoint: "/sys", Options: "rw", Fstype: "sysfs", Source: "sysfs", VFSOptions: "rw"},
			},
		},
		{
			name: "invalid escapes kept",
			in:   `3 1 0:3 / /a\9b\04\400 rw - t s o`,
			want: []Info{{ID: 3, Parent: 1, Minor: 3, Root: "/", Mountpoint: `/a\9b\04\400`, Options: "rw", Fstype: "t", Source: "s", VFSOptions: "o"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMountinfo(strings.NewReader(tt.in))
			if tt.want == nil {
				if err == nil {
					t.Fatalf("ParseMountinfo(%q) = %+v, want an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMountinfo(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseMountinfo(%q) =\n%+v\nwant\n%+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseMountinfoErrors(t *testing.T) {
	for _, in := range []string{
		"garbage",
		"1 2 3 4 5 6 7 8 9 10",                        // no separator
		"x 1 0:1 / / rw - a b c",                      // bad ID
		"1 y 0:1 / / rw - a b c",                      // bad parent
		"1 1 01 / / rw - a b c",                       // no colon
		"1 1 a:1 / / rw - a b c",                      // bad major
		"1 1 1:b / / rw - a b c",                      // bad minor
		"1 1 1:1 / / rw - a b",                        // too few after separator
		"1 1 1:1 / / rw x - a b c d",                  // too many after separator
		"1 0 0:1 / / rw - a b c\n2 1 0:2 / /x rw - a", // second line bad
	} {
		if got, err := ParseMountinfo(strings.NewReader(in)); err == nil {
			t.Errorf("ParseMountinfo(%q) = %+v, want an error", in, got)
		}
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
	f.Add(`40 1 0:50 / /tmp/with\040space rw shared:4 - tmpfs tmpfs rw`)
	f.Add("1 0 0:1 / / rw - a  b\n")
	f.Fuzz(func(t *testing.T, in string) {
		infos, err := ParseMountinfo(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, i := range infos {
			// Decoding never makes a field longer than its escaped form.
			if len(i.Mountpoint) > len(in) || len(i.Root) > len(in) {
				t.Fatalf("decoded field longer than the input: %+v", i)
			}
		}
	})
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"":               "",
		"plain":          "plain",
		`a\040b`:         "a b",
		`\011\012\134`:   "\t\n\\",
		`\0`:             `\0`,
		`end\`:           `end\`,
		`\377\400`:       "\xff\\400",
		`x\134040`:       `x\040`, // decoded once, not twice
		`\040\040\040`:   "   ",
		`mixed\040\x\12`: `mixed \x\12`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBelow(t *testing.T) {
	infos := []Info{
		{Mountpoint: "/"},
		{Mountpoint: "/a"},
		{Mountpoint: "/a/b"},
		{Mountpoint: "/ab"},
		{Mountpoint: "/a/b/c"},
		{Mountpoint: "/a/b"}, // stacked on the first /a/b
		{Mountpoint: "/a/x"},
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"/a", []string{"/a/b/c", "/a/x", "/a/b", "/a/b", "/a"}},
		{"/a/b", []string{"/a/b/c", "/a/b", "/a/b"}},
		{"/ab", []string{"/ab"}},
		{"/none", []string{}},
		{"/", []string{"/a/b/c", "/a/x", "/a/b", "/a/b", "/ab", "/a", "/"}},
	}
	for _, tt := range tests {
		got := Below(infos, tt.prefix)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Below(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
	}
}

func TestOverlayOptions(t *testing.T) {
	tests := []struct {
		lower       []string
		upper, work string
		want        string
		wantErr     bool
	}{
		{[]string{"/l"}, "/u", "/w", "lowerdir=/l,upperdir=/u,workdir=/w", false},
		{[]string{"/l1", "/l2"}, "/u", "/w", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w", false},
		{[]string{"/a:b", "/c,d"}, `/u\v`, "/w,x", `lowerdir=/a\:b:/c\,d,upperdir=/u\\v,workdir=/w\,x`, false},
		{[]string{"/l1", "/l2"}, "", "", "lowerdir=/l1:/l2", false},
		{nil, "/u", "/w", "", true},
		{[]string{"/l"}, "", "", "", true},   // read-only needs two lowers
		{[]string{"/l"}, "/u", "", "", true}, // upper without work
		{[]string{"/l", ""}, "/u", "/w", "", true},
		{[]string{"/" + strings.Repeat("x", 5000)}, "/u", "/w", "", true},
	}
	for _, tt := range tests {
		got, err := OverlayOptions(tt.lower, tt.upper, tt.work)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("OverlayOptions(%q, %q, %q) = %q, %v; want %q, error %v", tt.lower, tt.upper, tt.work, got, err, tt.want, tt.wantErr)
		}
	}
	long := make([]string, 100)
	for i := range long {
		long[i] = "/var/lib/some/rather/long/layer/path/" + strings.Repeat("l", 20)
	}
	if _, err := OverlayOptions(long, "/u", "/w"); !errors.Is(err, ErrOptionsTooLong) {
		t.Errorf("OverlayOptions(100 long layers) error = %v, want ErrOptionsTooLong", err)
	}
}

func TestErrorMessage(t *testing.T) {
	inner := errors.New("boom")
	e := &Error{Op: "mount", Source: "overlay", Target: "/m", Fstype: "overlay", Flags: 0x1000, Data: "lowerdir=/l", Err: inner}
	want := `mount overlay -> /m (type overlay, flags 0x1000, data "lowerdir=/l"): boom`
	if got := e.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, inner) {
		t.Errorf("errors.Is(%v, inner) = false", e)
	}
	if got, want := (&Error{Op: "unmount", Target: "/m", Err: inner}).Error(), "unmount /m: boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestUnixMode(t *testing.T) {
	for in, want := range map[os.FileMode]uint32{
		0o755:                                  0o755,
		0o1777 | os.ModeSticky:                 0o1777, // Perm drops the stray bits
		os.ModeSticky | 0o777:                  0o1777,
		os.ModeSetuid | os.ModeSetgid | 0o750:  0o6750,
		os.ModeDir | os.ModeSetgid | 0o2755:    0o2755,
		os.ModeSetuid | os.ModeSticky | 0o0644: 0o5644,
	} {
		if got := unixMode(in); got != want {
			t.Errorf("unixMode(%v) = %#o, want %#o", in, got, want)
		}
	}
}
