package gitlab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Project identifies a job's project across GitLab instances: project 5
// of one instance is not project 5 of another. A job run locally with
// `gitlab-runner exec` has no instance and no real project id: its project
// is the local repository it was started in (Local).
type Project struct {
	// Instance is the GitLab instance, "scheme://host[:port]" in lower
	// case with the default port removed.
	Instance string
	// ID is the project's numeric id on that instance.
	ID int64
	// Local is the repository path of a local job (gitlab-runner exec),
	// cleaned; Instance and ID are then empty. It is only ever hashed,
	// never used as a path.
	Local string
}

// ErrNoProject means the job payload does not say which project the job
// belongs to; callers then give the job no persistent per-project state.
var ErrNoProject = errors.New("job payload names no project")

// projectPayload is the part of gitlab-runner's job payload (the
// JobResponse it writes to JOB_RESPONSE_FILE) that identifies the project.
type projectPayload struct {
	JobInfo struct {
		ProjectID json.Number `json:"project_id"`
	} `json:"job_info"`
	GitInfo struct {
		RepoURL string `json:"repo_url"`
	} `json:"git_info"`
}

// ReadProject reads the project from the job payload at path, the
// JOB_RESPONSE_FILE gitlab-runner wrote for this job.
func ReadProject(path string) (Project, error) {
	if path == "" {
		return Project{}, fmt.Errorf("read job payload: JOB_RESPONSE_FILE is not set: %w", ErrNoProject)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Project{}, fmt.Errorf("read job payload: %w", err)
	}
	p, err := ParseProject(data)
	if err != nil {
		return Project{}, fmt.Errorf("job payload %s: %w", path, err)
	}
	return p, nil
}

// ParseProject extracts the project from a job payload. Only what the
// GitLab server itself wrote is used: job_info.project_id, and the
// instance from git_info.repo_url, the clone URL the server builds from its
// own external URL. Job variables (CI_SERVER_URL, CI_PROJECT_ID) are not
// consulted: a job's .gitlab-ci.yml can set variables of those names and
// would then reach another project's cache.
//
// A repo_url that is an absolute path is a local job: `gitlab-runner exec`
// writes the payload itself, with the directory it runs in as repo_url and
// a made-up project id (1 or 0, depending on the version), which is
// ignored. A server never sends a path there (it sends its clone URL), and
// jobs cannot change the payload, so no server job is taken for a local one.
func ParseProject(data []byte) (Project, error) {
	var pl projectPayload
	if err := json.Unmarshal(data, &pl); err != nil {
		return Project{}, fmt.Errorf("parse job payload: %w", err)
	}
	if strings.HasPrefix(pl.GitInfo.RepoURL, "/") {
		return Project{Local: filepath.Clean(pl.GitInfo.RepoURL)}, nil
	}
	if pl.JobInfo.ProjectID == "" {
		return Project{}, fmt.Errorf("job_info.project_id missing: %w", ErrNoProject)
	}
	id, err := strconv.ParseInt(string(pl.JobInfo.ProjectID), 10, 64)
	if err != nil || id <= 0 {
		return Project{}, fmt.Errorf("job_info.project_id %q is not a positive integer: %w", pl.JobInfo.ProjectID, ErrNoProject)
	}
	inst, err := instanceOf(pl.GitInfo.RepoURL)
	if err != nil {
		return Project{}, fmt.Errorf("git_info.repo_url: %v: %w", err, ErrNoProject)
	}
	return Project{Instance: inst, ID: id}, nil
}

// instanceOf reduces a clone URL to "scheme://host[:port]", dropping the
// credentials the server embeds (gitlab-ci-token:TOKEN@) and the path.
func instanceOf(repoURL string) (string, error) {
	if repoURL == "" {
		return "", errors.New("missing")
	}
	u, err := url.Parse(repoURL)
	if err != nil {
		// url.Error quotes the whole URL, token included: say less.
		return "", errors.New("not a URL")
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	if scheme == "" || host == "" {
		return "", errors.New("no scheme or host")
	}
	port := u.Port()
	if port == defaultPort[scheme] {
		port = ""
	}
	if strings.Contains(host, ":") {
		// An IPv6 address, bracketed as in the URL (net.JoinHostPort's
		// rule; package net itself is more than the run stage, which
		// links this package, should start).
		host = "[" + host + "]"
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return "", fmt.Errorf("invalid port %q", port)
		}
		return scheme + "://" + host + ":" + port, nil
	}
	return scheme + "://" + host, nil
}

var defaultPort = map[string]string{"https": "443", "http": "80", "ssh": "22"}

// maxHostInKey bounds the readable part of a key so that a key always fits
// in a file name (255 bytes) with room to spare.
const maxHostInKey = 64

// Key is the project's directory name under the per-project cache and
// builds roots: "<host>-<hash>-<id>", for example
// "gitlab.example.com-1a2b3c4d-42". The host makes it readable; the hash of
// the whole instance keeps two instances apart even where sanitizing their
// hosts gives the same text (ports, IPv6, IDN, long names). It contains only
// [a-z0-9._-], never starts with '.' or '-', and is never "." or "..".
//
// A local job's key is "local-<hash of the path>-0". Server projects have
// ids from 1 up, so their keys never end in "-0": no server job can get a
// local job's key, whatever its host is called, nor the reverse.
func (p Project) Key() string {
	if p.Local != "" {
		h := sha256.Sum256([]byte("local\x00" + p.Local))
		return "local-" + hex.EncodeToString(h[:8]) + "-0"
	}
	h := sha256.Sum256([]byte(p.Instance))
	host := p.Instance
	if i := strings.Index(host, "://"); i >= 0 {
		host = host[i+3:]
	}
	var b strings.Builder
	for i := 0; i < len(host) && b.Len() < maxHostInKey; i++ {
		c := host[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-':
			b.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		default:
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), ".-_")
	if name == "" {
		name = "gitlab"
	}
	return name + "-" + hex.EncodeToString(h[:4]) + "-" + strconv.FormatInt(p.ID, 10)
}
