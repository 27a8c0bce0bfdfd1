package gitlab

import (
	"fmt"
	"slices"
	"strings"
)

// ImageError is a job's image that this runner will not start: it does
// not exist, or the allowlist does not include it. It is a system failure;
// its message names the images a job may use, since the job log is where
// the person who wrote `image:` will look.
type ImageError struct {
	Name string
	// Exists is false when no image of that name exists.
	Exists bool
	// Available are the images jobs may select, sorted.
	Available []string
}

func (e *ImageError) Error() string {
	why := "does not exist"
	if e.Exists {
		why = "is not in this runner's allowed_images"
	}
	avail := "none (create one with nspawn-runner chroot-create)"
	if len(e.Available) > 0 {
		avail = strings.Join(e.Available, ", ")
	}
	return fmt.Sprintf("image %q %s; images available to jobs: %s", e.Name, why, avail)
}

// AvailableImages are the images jobs may select: those that exist and,
// when allowed is not empty, are in it. Sorted, without duplicates.
func AvailableImages(existing, allowed []string) []string {
	var out []string
	for _, n := range existing {
		if len(allowed) == 0 || slices.Contains(allowed, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// CheckImage returns nil when a job may use the image called name, and an
// *ImageError otherwise. Names are compared exactly: the caller has
// already validated name as an image name, and a name that is not
// character for character an existing image is refused.
func CheckImage(name string, existing, allowed []string) error {
	avail := AvailableImages(existing, allowed)
	if slices.Contains(avail, name) {
		return nil
	}
	return &ImageError{Name: name, Exists: slices.Contains(existing, name), Available: avail}
}
