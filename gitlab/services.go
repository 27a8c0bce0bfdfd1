package gitlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// MaxServices bounds the services of one job: each is a machine.
const MaxServices = 16

// ServiceSpec is one entry of the job's services: as gitlab-runner hands
// it over in CUSTOM_ENV_CI_JOB_SERVICES.
type ServiceSpec struct {
	Name       string   `json:"name"`
	Alias      string   `json:"alias"`
	Entrypoint []string `json:"entrypoint"`
	Command    []string `json:"command"`
}

// Service is a service the runner will start: its image and the host
// names the job reaches it by.
type Service struct {
	// Name is the service's name: as the job wrote it.
	Name string
	// Image is the image selected for it (SelectServiceImage).
	Image string
	// Aliases are the explicit aliases, then the names GitLab derives
	// from Name, without duplicates; all valid host names.
	Aliases []string
	// Command is entrypoint then command; empty boots the image.
	Command []string
}

// ParseServices reads CUSTOM_ENV_CI_JOB_SERVICES; "" (no services) is
// none. Fields other than name, alias, entrypoint and command are ignored.
func ParseServices(raw string) ([]ServiceSpec, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" || raw == "null" {
		return nil, nil
	}
	var specs []ServiceSpec
	if err := json.Unmarshal([]byte(raw), &specs); err != nil {
		return nil, fmt.Errorf("CUSTOM_ENV_CI_JOB_SERVICES is not a JSON list of services: %w", err)
	}
	if len(specs) > MaxServices {
		return nil, fmt.Errorf("the job has %d services; this runner starts at most %d", len(specs), MaxServices)
	}
	return specs, nil
}

// maxServiceName bounds a service's name (a docker reference is at most
// 255 characters).
const maxServiceName = 255

// checkServiceName refuses a service name that is not an image reference:
// empty path components, "." or "..", and characters other than letters,
// digits and ._-/:@+.
func checkServiceName(name string) error {
	if name == "" || len(name) > maxServiceName {
		return fmt.Errorf("invalid service name %q: 1 to %d characters", clip(name), maxServiceName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-/:@+", c) >= 0) {
			return fmt.Errorf("invalid service name %q: letters, digits and ._-/:@+ only", clip(name))
		}
	}
	for _, p := range strings.Split(name, "/") {
		if p == "" || p == "." || p == ".." {
			return fmt.Errorf("invalid service name %q: a path component is empty, . or ..", clip(name))
		}
	}
	return nil
}

// splitReference splits an image reference into its repository (the
// name without tag or digest, registry and path kept) and its tag.
func splitReference(name string) (repo, tag string) {
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	slash := strings.LastIndexByte(name, '/')
	if i := strings.LastIndexByte(name, ':'); i > slash {
		return name[:i], name[i+1:]
	}
	return name, ""
}

// ServiceImageCandidates are the images a service name may select, in
// order: "postgres:16" is postgres-16, then postgres; the registry and
// path are dropped ("registry.example/lib/redis:7" is redis-7, then
// redis).
func ServiceImageCandidates(name string) []string {
	repo, tag := splitReference(name)
	base := repo[strings.LastIndexByte(repo, '/')+1:]
	if tag == "" || tag == "latest" {
		return []string{base}
	}
	return []string{base + "-" + tag, base}
}

// SelectServiceImage chooses the image of a service: the first candidate
// (ServiceImageCandidates) that passes checkName, exists and is allowed.
// A name that is no image reference is an error; one that selects
// nothing is an *ImageError naming the images jobs may use.
func SelectServiceImage(name string, checkName func(string) error, existing, allowed []string) (string, error) {
	if err := checkServiceName(name); err != nil {
		return "", err
	}
	cands := ServiceImageCandidates(name)
	var nameErr error
	for _, c := range cands {
		if err := checkName(c); err != nil {
			nameErr = err
			continue
		}
		if CheckImage(c, existing, allowed) == nil {
			return c, nil
		}
	}
	if nameErr != nil && len(cands) == 1 {
		return "", fmt.Errorf("service %q: %w", clip(name), nameErr)
	}
	last := cands[len(cands)-1]
	return "", &ImageError{Name: last, Candidates: cands, Exists: slices.Contains(existing, last), Available: AvailableImages(existing, allowed), Service: name}
}

// DerivedAliases are the host names GitLab gives a service from its name:
// the repository without tag, '/' replaced by "__" and by "-"
// ("registry.example.com/group/img:tag" is registry.example.com__group__img
// and registry.example.com-group-img). Names that are no valid host name
// (a registry port's ':') are left out.
func DerivedAliases(name string) []string {
	repo, _ := splitReference(name)
	var out []string
	for _, a := range []string{strings.ReplaceAll(repo, "/", "__"), strings.ReplaceAll(repo, "/", "-")} {
		if CheckAlias(a) == nil && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// CheckAlias accepts a host name for /etc/hosts: 1 to 253 letters,
// digits, '.', '_' and '-', starting with a letter or digit; not
// localhost.
func CheckAlias(a string) error {
	if a == "" || len(a) > 253 {
		return fmt.Errorf("invalid service alias %q: 1 to 253 characters", clip(a))
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '.' || c == '_' || c == '-'
		}
		if !ok {
			return fmt.Errorf("invalid service alias %q: letters, digits, '.', '_' and '-', starting with a letter or digit", clip(a))
		}
	}
	if strings.EqualFold(a, "localhost") {
		return errors.New(`invalid service alias "localhost"`)
	}
	return nil
}

// ServiceChoice is the runner's side of choosing services' images.
type ServiceChoice struct {
	// Allowed is allowed_images; CheckName the image-name rule; Existing
	// lists the images on this runner.
	Allowed   []string
	CheckName func(string) error
	Existing  func() ([]string, error)
}

// SelectServices parses the job's services (CUSTOM_ENV_CI_JOB_SERVICES),
// chooses each one's image and works out its aliases. Any name or alias
// that is refused fails the whole job (a system failure): a job whose
// database silently did not start would fail later in a less clear way.
func SelectServices(getenv func(string) string, c ServiceChoice) ([]Service, error) {
	specs, err := ParseServices(getenv("CUSTOM_ENV_CI_JOB_SERVICES"))
	if err != nil || len(specs) == 0 {
		return nil, err
	}
	existing, err := c.Existing()
	if err != nil {
		return nil, err
	}
	var out []Service
	for _, s := range specs {
		s.Name = strings.TrimSpace(s.Name)
		image, err := SelectServiceImage(s.Name, c.CheckName, existing, c.Allowed)
		if err != nil {
			return nil, err
		}
		svc := Service{Name: s.Name, Image: image, Command: append(slices.Clip(s.Entrypoint), s.Command...)}
		// GitLab takes several aliases separated by commas or spaces.
		for _, a := range strings.FieldsFunc(s.Alias, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			if err := CheckAlias(a); err != nil {
				return nil, fmt.Errorf("service %q: %w", clip(s.Name), err)
			}
			if !slices.Contains(svc.Aliases, a) {
				svc.Aliases = append(svc.Aliases, a)
			}
		}
		for _, a := range DerivedAliases(s.Name) {
			if !slices.Contains(svc.Aliases, a) {
				svc.Aliases = append(svc.Aliases, a)
			}
		}
		out = append(out, svc)
	}
	return out, nil
}

// JobVariables are the job's variables as KEY=VALUE (CUSTOM_ENV_ removed)
// from a process environment, for services' commands: what the docker
// executor puts in a service's environment. (The machine leaves out names
// that are not shell identifiers.)
func JobVariables(environ []string) []string {
	var out []string
	for _, kv := range environ {
		rest, ok := strings.CutPrefix(kv, "CUSTOM_ENV_")
		if k, _, ok2 := strings.Cut(rest, "="); ok && ok2 && k != "" {
			out = append(out, rest)
		}
	}
	return out
}
