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

func TestSelectImage(t *testing.T) {
	// A stand-in for the image-name rule: SelectImage must apply it
	// before looking the name up.
	checkName := func(n string) error {
		if strings.ContainsAny(n, "/.") {
			return errors.New("invalid image name")
		}
		return nil
	}
	existing := func() ([]string, error) { return []string{"bookworm", "trixie", "sid"}, nil }
	listFails := func() ([]string, error) { return nil, errors.New("list images: EIO") }
	job := func(image string) map[string]string { return map[string]string{"CUSTOM_ENV_CI_JOB_IMAGE": image} }
	for _, tc := range []struct {
		name    string
		env     map[string]string
		c       ImageChoice
		want    string
		wantErr string
	}{
		{"argument wins", job("sid"), ImageChoice{Arg: "trixie", DefaultFlag: "sid", Default: "sid"}, "trixie", ""},
		{"job's image: next", job("registry.example/group/base:trixie"), ImageChoice{DefaultFlag: "sid", Default: "sid"}, "trixie", ""},
		{"then --default-image", nil, ImageChoice{DefaultFlag: "sid", Default: "bookworm"}, "sid", ""},
		{"then default_image", nil, ImageChoice{Default: "bookworm"}, "bookworm", ""},
		{"none at all", nil, ImageChoice{}, "", "no image"},
		{"name rule first", job("registry.example/x/../../etc:.."), ImageChoice{Default: "bookworm"}, "", "invalid image name"},
		{"missing image lists the others", job("nope"), ImageChoice{}, "", "images available to jobs: bookworm, sid, trixie"},
		{"allowlist", job("sid"), ImageChoice{Allowed: []string{"bookworm"}}, "", "not in this runner's allowed_images; images available to jobs: bookworm"},
		{"listing fails", job("sid"), ImageChoice{Existing: listFails}, "", "EIO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.CheckName = checkName
			if c.Existing == nil {
				c.Existing = existing
			}
			got, err := SelectImage(envOf(tc.env), c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("SelectImage = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("SelectImage = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
