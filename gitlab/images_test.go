package gitlab

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestCheckImage(t *testing.T) {
	existing := []string{"trixie", "bookworm", "unstable"}
	for _, tc := range []struct {
		name    string
		allowed []string
		ok      bool
		exists  bool
		avail   []string
	}{
		{name: "bookworm", ok: true},
		{name: "bookworm", allowed: []string{"bookworm", "nonexistent"}, ok: true},
		{name: "trixie", allowed: []string{"bookworm"}, exists: true, avail: []string{"bookworm"}},
		{name: "sid", exists: false, avail: []string{"bookworm", "trixie", "unstable"}},
		{name: "Bookworm", exists: false, avail: []string{"bookworm", "trixie", "unstable"}},
		{name: "../bookworm", avail: []string{"bookworm", "trixie", "unstable"}},
		{name: "", avail: []string{"bookworm", "trixie", "unstable"}},
		{name: "sid", allowed: []string{"sid"}, avail: nil},
	} {
		err := CheckImage(tc.name, existing, tc.allowed)
		if tc.ok {
			if err != nil {
				t.Errorf("CheckImage(%q, allowed %q) = %v, want nil", tc.name, tc.allowed, err)
			}
			continue
		}
		var ie *ImageError
		if !errors.As(err, &ie) {
			t.Errorf("CheckImage(%q, allowed %q) = %v, want an *ImageError", tc.name, tc.allowed, err)
			continue
		}
		if ie.Exists != tc.exists || !reflect.DeepEqual(ie.Available, tc.avail) {
			t.Errorf("CheckImage(%q, allowed %q) = %+v, want exists %v available %q", tc.name, tc.allowed, ie, tc.exists, tc.avail)
		}
		msg := err.Error()
		for _, a := range tc.avail {
			if !strings.Contains(msg, a) {
				t.Errorf("message %q does not name available image %q", msg, a)
			}
		}
		if len(tc.avail) == 0 && !strings.Contains(msg, "chroot-create") {
			t.Errorf("message %q does not say how to create an image", msg)
		}
	}
}

func TestAvailableImagesSortedUnique(t *testing.T) {
	got := AvailableImages([]string{"b", "a", "b", "c"}, []string{"c", "b"})
	if want := []string{"b", "c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("AvailableImages = %q, want %q", got, want)
	}
}
