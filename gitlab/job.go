package gitlab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Job is the identity of one CI job as gitlab-runner vouches for it.
type Job struct {
	// ID is the job id: decimal digits from the runner, or a harness's
	// --id ([A-Za-z0-9_-]{1,64}).
	ID string
	// Key tells this job apart from any other job with the same id running
	// at the same time (another GitLab instance, another runner): a hash of
	// the id and what every stage of this job shares but no other job does.
	// Every stage of one job computes the same Key.
	Key string
	// Source says where ID came from: "job-response-file", "flag" or
	// "variables".
	Source string
}

// ErrNoJobID is returned when nothing a stage may trust names the job.
var ErrNoJobID = errors.New("no job id")

// JobSources are the places besides the runner's job payload that may
// name the job.
type JobSources struct {
	// Flag is --id, given by a harness that drives the stages itself: as
	// trusted as the payload, and it wins over it.
	Flag string
	// Variables lets CUSTOM_ENV_CI_JOB_ID name the job when there is
	// neither a payload nor a flag, as the original nspawn-runner did for
	// runners that predate JOB_RESPONSE_FILE. Job variables can override
	// predefined ones, so a job can then give itself another job's id and
	// reach that job's machine: only an explicit choice of the admin turns
	// this on.
	Variables bool
}

// JobFromEnv works out the job identity of the current stage: src.Flag
// when given, else the top-level "id" of the runner's JOB_RESPONSE_FILE,
// else, only when src.Variables allows it, CUSTOM_ENV_CI_JOB_ID. Ids that
// are not decimal digits (or, for the flag, [A-Za-z0-9_-]{1,64}) are
// refused. Without any of them the error wraps ErrNoJobID.
func JobFromEnv(getenv func(string) string, src JobSources) (Job, error) {
	var j Job
	respFile := getenv("JOB_RESPONSE_FILE")
	switch {
	case src.Flag != "":
		if err := checkFlagID(src.Flag); err != nil {
			return Job{}, err
		}
		j.ID, j.Source = src.Flag, "flag"
	case respFile != "":
		id, err := readJobID(respFile)
		if err != nil {
			return Job{}, err
		}
		j.ID, j.Source = id, "job-response-file"
	case src.Variables && getenv("CUSTOM_ENV_CI_JOB_ID") != "":
		id := getenv("CUSTOM_ENV_CI_JOB_ID")
		if !digits(id) {
			return Job{}, fmt.Errorf("invalid CUSTOM_ENV_CI_JOB_ID %q: want decimal digits", clip(id))
		}
		j.ID, j.Source = id, "variables"
	case src.Variables:
		return Job{}, fmt.Errorf("%w: JOB_RESPONSE_FILE, --id and CUSTOM_ENV_CI_JOB_ID are all missing", ErrNoJobID)
	default:
		return Job{}, fmt.Errorf("%w: JOB_RESPONSE_FILE is not set and no --id was given", ErrNoJobID)
	}
	j.Key = jobKey(j.ID, respFile, getenv)
	return j, nil
}

// jobKey hashes the id with what is constant across the stages of one job
// and differs between jobs: the per-job JOB_RESPONSE_FILE path (gitlab-runner
// gives each job its own temporary directory), the GitLab instance, the
// runner and the project.
func jobKey(id, respFile string, getenv func(string) string) string {
	h := sha256.New()
	dir := ""
	if respFile != "" {
		dir, _ = filepath.Abs(respFile)
	}
	for _, v := range []string{
		id, dir,
		getenv("CUSTOM_ENV_CI_SERVER_URL"),
		getenv("CUSTOM_ENV_CI_RUNNER_ID"),
		getenv("CUSTOM_ENV_CI_PROJECT_ID"),
	} {
		// Length-prefixed so that no two different tuples hash alike.
		fmt.Fprintf(h, "%d:%s\n", len(v), v)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// maxJobResponse bounds what is read of JOB_RESPONSE_FILE: the payload
// carries variables and steps, rarely more than a few hundred KiB.
const maxJobResponse = 64 << 20

func readJobID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read JOB_RESPONSE_FILE: %w", err)
	}
	defer f.Close()
	id, err := parseJobID(&limitedReader{r: f, n: maxJobResponse})
	if err != nil {
		return "", fmt.Errorf("JOB_RESPONSE_FILE %s: %w", path, err)
	}
	return id, nil
}

// parseJobID reads the job payload's top-level "id". (The project, for
// per-project state, is ParseProject's.)
func parseJobID(rd io.Reader) (string, error) {
	var raw struct {
		ID json.RawMessage `json:"id"`
	}
	if err := json.NewDecoder(rd).Decode(&raw); err != nil {
		return "", fmt.Errorf("parse: %w", err)
	}
	id, ok := jsonID(raw.ID)
	if !ok {
		return "", fmt.Errorf("top-level \"id\" is %q, want a positive integer", clip(string(raw.ID)))
	}
	return id, nil
}

// jsonID accepts a JSON number or string of decimal digits (at most 20, so
// it fits a uint64 and a machine name).
func jsonID(m json.RawMessage) (string, bool) {
	s := strings.TrimSpace(string(m))
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	if !digits(s) || len(s) > 20 {
		return "", false
	}
	return s, true
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func checkFlagID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("invalid --id %q: want 1 to 64 characters of [A-Za-z0-9_-]", clip(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("invalid --id %q: want 1 to 64 characters of [A-Za-z0-9_-]", clip(id))
		}
	}
	return nil
}

// clip shortens hostile input before it goes into an error message.
func clip(s string) string {
	if len(s) > 70 {
		return s[:70] + "..."
	}
	return s
}

// ImageFromEnv maps the job's image: to an image name as the original tool
// did: the last path component of CUSTOM_ENV_CI_JOB_IMAGE with its tag
// kept ("registry.example/group/base:unstable" selects "unstable",
// "bookworm" selects "bookworm"). It returns "" when the job names no
// image. The result is user input: callers validate it.
func ImageFromEnv(getenv func(string) string) string {
	return MapImage(getenv("CUSTOM_ENV_CI_JOB_IMAGE"))
}

// MapImage is the mapping of ImageFromEnv on one value.
func MapImage(image string) string {
	image = strings.TrimSpace(image)
	if image == "" {
		return ""
	}
	if i := strings.LastIndexByte(image, '/'); i >= 0 {
		image = image[i+1:]
	}
	// "name:tag" selects the tag, as the original did; a bare name selects
	// itself. A digest ("name@sha256:...") is not an image name we have.
	if i := strings.LastIndexByte(image, ':'); i >= 0 {
		image = image[i+1:]
	}
	return image
}

// limitedReader stops at n bytes with an error rather than a silent EOF,
// so an oversized payload is refused instead of half-parsed.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("JOB_RESPONSE_FILE larger than 64 MiB")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
