package machine

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// goldenRecord sets every field of a record, so that a field added,
// renamed or retyped shows in the golden file.
func goldenRecord() *Record {
	return &Record{
		Name: "nr-42-0123456789ab", JobID: "42", State: StateRunning, Mode: "boot", Storage: StorageBtrfs,
		Image: "bookworm", ImagePath: "/var/lib/nspawn-runner/bookworm", ImageDev: 41, ImageIno: 256,
		Tree:       "/var/lib/nspawn-runner/.machines/nr-42-0123456789ab/root",
		MachineDir: "/var/lib/nspawn-runner/.machines/nr-42-0123456789ab",
		RunDir:     "/run/nspawn-runner/machines/nr-42-0123456789ab", Cgroup: "nspawn-runner/nr-42-0123456789ab",
		Network: "private", Address: "10.213.0.7", PrivateUsers: true, UIDShift: 968425472,
		NspawnPID: 1000, NspawnStart: 123456, LeaderPID: 1001, LeaderStart: 123460,
		Path: []string{"/usr/local/bin/gitlab-runner-dir"}, Env: []string{"A=b"},
		Binds: []Bind{
			{Host: "/var/cache/nspawn-runner/x-0123-42", Machine: "/cache"},
			{Host: "/usr/bin/gitlab-runner", Machine: "/usr/local/bin/gitlab-runner", ReadOnly: true},
		},
		Created: time.Date(2026, 12, 4, 5, 30, 0, 123456789, time.UTC),
		Job:     "nr-42-0123456789ab", Service: "postgres:16", Aliases: []string{"db", "postgres"}, DebugServices: true,
		// A pooled machine has a pool key, a claimed one the name it was
		// started with; one record holds both for the format's sake.
		PoolKey: "0123456789abcdef01234567", Machine: "nr-pool-0123456789abc",
		Shell: "bash", MemoryMax: 2 << 30,
	}
}

// TestRecordFormat: the record on disk is exactly testdata/record.json.
// Records outlive the binary that wrote them (an upgrade while machines
// run: the new binary runs their stages and cleans them up), so the
// format changes only on purpose: then readRecord must still read the old
// format (add a test like TestRecordUntaggedBinds) and the golden file is
// rewritten.
func TestRecordFormat(t *testing.T) {
	g := reflect.ValueOf(goldenRecord()).Elem()
	for i := 0; i < g.NumField(); i++ {
		if g.Field(i).IsZero() {
			t.Errorf("goldenRecord leaves Record.%s unset: set it, so that the golden file holds its format", g.Type().Field(i).Name)
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := writeRecord(path, goldenRecord()); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join("testdata", "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the record format changed (read the comment of this test):\ngot:\n%s\nwant (testdata/record.json):\n%s", got, want)
	}
	r, err := readRecord(filepath.Join("testdata", "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, goldenRecord()) {
		t.Errorf("readRecord(testdata/record.json) = %+v, want %+v", r, goldenRecord())
	}
}

// TestRecordUntaggedBinds: records written before the record had its own
// Bind type stored sys/nspawn's untagged struct; they still read.
func TestRecordUntaggedBinds(t *testing.T) {
	r, err := readRecord(filepath.Join("testdata", "record-untagged-binds.json"))
	if err != nil {
		t.Fatal(err)
	}
	// That file predates the network, user namespace and pool fields.
	want := goldenRecord()
	want.Network, want.Address, want.PoolKey, want.Machine = "", "", "", ""
	// And the service fields.
	want.Job, want.Service, want.Aliases, want.DebugServices = "", "", nil, false
	want.PrivateUsers, want.UIDShift = false, 0
	// And what the run stage reads instead of the configuration.
	want.Shell, want.MemoryMax = "", 0
	if !reflect.DeepEqual(r, want) {
		t.Errorf("readRecord(testdata/record-untagged-binds.json) = %+v, want %+v", r, want)
	}
}
