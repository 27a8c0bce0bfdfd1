package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
)

func TestListRows(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.Local)
	imgs := []bootstrap.Image{
		{Name: "bookworm", Path: "/r/bookworm", Kind: "subvolume", Size: 250 << 20, Created: now.Add(-time.Hour), Maintained: now.Add(-time.Minute), Suite: "bookworm"},
		{Name: "old", Path: "/r/old", Kind: "directory", Size: 1000, Created: now.AddDate(-2, 0, 0)},
	}
	pbs := map[string]string{"bookworm": "/etc/nspawn-runner/bookworm.yaml", "sid": "/etc/nspawn-runner/sid.yml"}
	rows := listRows(imgs, pbs)
	var buf bytes.Buffer
	if err := writeListTable(&buf, rows, now); err != nil {
		t.Fatal(err)
	}
	want := `NAME      KIND       SIZE     CREATED           MAINTAINED        PLAYBOOK                          PATH
bookworm  subvolume  250.0Mi  2026-11-29 11:00  2026-11-29 11:59  /etc/nspawn-runner/bookworm.yaml  /r/bookworm
old       directory  1000B    2024-11-29        -                 -                                 /r/old
sid       missing    -        -                 -                 /etc/nspawn-runner/sid.yml        -
`
	if buf.String() != want {
		t.Errorf("writeListTable =\n%s\nwant\n%s", buf.String(), want)
	}
	buf.Reset()
	if err := writeListJSON(&buf, rows); err != nil {
		t.Fatal(err)
	}
	var back []listRow
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 3 || back[2].Name != "sid" || back[2].Exists || back[0].Playbook == "" || back[0].Size != 250<<20 {
		t.Errorf("JSON round trip = %+v", back)
	}
	buf.Reset()
	writeListJSON(&buf, nil)
	if strings.TrimSpace(buf.String()) != "[]" {
		t.Errorf("JSON of no images = %q, want []", buf.String())
	}
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0B"}, {1023, "1023B"}, {1024, "1.0Ki"}, {1536, "1.5Ki"}, {250 << 20, "250.0Mi"}, {3 << 40, "3.0Ti"}} {
		if got := humanSize(tc.n); got != tc.want {
			t.Errorf("humanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
