package gitlab

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
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
	// Service is the service name when the image was chosen for a
	// service; Candidates are then the images it may select, in order.
	Service    string
	Candidates []string
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
	if e.Service != "" {
		q := make([]string, len(e.Candidates))
		for i, c := range e.Candidates {
			q[i] = strconv.Quote(c)
		}
		why = "selects no image: " + strings.Join(q, " or ") + " does not exist"
		if e.Exists {
			why = "selects no image: " + strings.Join(q, " or ") + " is not in this runner's allowed_images"
		}
		return fmt.Sprintf("service %q %s; images available to jobs: %s", clip(e.Service), why, avail)
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

// ImageChoice is what, besides the job's own image:, decides which image
// a job's machine starts from.
type ImageChoice struct {
	// Arg is prepare's IMAGE argument; it wins over everything.
	Arg string
	// DefaultFlag is prepare's --default-image, for jobs that name none;
	// Default is default_image of the configuration, after it.
	DefaultFlag string
	Default     string
	// Allowed is allowed_images: when not empty, the only images jobs
	// may use.
	Allowed []string
	// CheckName is the image-name rule, applied before the name is
	// looked up (names are never paths).
	CheckName func(name string) error
	// Existing lists the images on this runner.
	Existing func() ([]string, error)
}

// SelectImage chooses the job's image: c.Arg, else the job's image:
// (ImageFromEnv), else c.DefaultFlag, else c.Default; then checks the
// name, that the image exists and that the allowlist lets jobs use it. The
// error then lists the images jobs may use (*ImageError).
func SelectImage(getenv func(string) string, c ImageChoice) (string, error) {
	name := c.Arg
	for _, n := range []string{ImageFromEnv(getenv), c.DefaultFlag, c.Default} {
		if name == "" {
			name = n
		}
	}
	if name == "" {
		return "", errors.New("no image: the job names none (image:), and there is no --default-image or default_image in the config")
	}
	if err := c.CheckName(name); err != nil {
		return "", err
	}
	existing, err := c.Existing()
	if err != nil {
		return "", err
	}
	return name, CheckImage(name, existing, c.Allowed)
}
