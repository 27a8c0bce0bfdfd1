package gitlab

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func TestExecutorConfigJSON(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      ExecutorConfig
		want     map[string]any
		wantFail bool
	}{
		{
			name: "default",
			cfg:  NewExecutorConfig("ci1", "v1.2.3", false),
			want: map[string]any{
				"builds_dir": "/builds", "cache_dir": "/cache", "builds_dir_is_shared": false,
				"hostname": "ci1", "shell": "bash",
				"driver": map[string]any{"name": "nspawn-runner", "version": "v1.2.3"},
			},
		},
		{
			name: "quotes in hostname and version are escaped",
			cfg:  NewExecutorConfig(`h"1`, "dev\n", true),
			want: map[string]any{
				"builds_dir": "/builds", "cache_dir": "/cache", "builds_dir_is_shared": true,
				"hostname": `h"1`, "shell": "bash",
				"driver": map[string]any{"name": "nspawn-runner", "version": "dev\n"},
			},
		},
		{name: "relative builds dir", cfg: ExecutorConfig{BuildsDir: "builds", CacheDir: "/cache"}, wantFail: true},
		{name: "unclean cache dir", cfg: ExecutorConfig{BuildsDir: "/builds", CacheDir: "/cache/../etc"}, wantFail: true},
		{name: "empty cache dir", cfg: ExecutorConfig{BuildsDir: "/builds"}, wantFail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.cfg.JSON()
			if tc.wantFail {
				if err == nil {
					t.Fatalf("JSON() = %s, want an error", b)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Count(b, []byte("\n")) != 1 || b[len(b)-1] != '\n' {
				t.Errorf("JSON() = %q, want one line", b)
			}
			var got map[string]any
			dec := json.NewDecoder(bytes.NewReader(b))
			if err := dec.Decode(&got); err != nil {
				t.Fatal(err)
			}
			if dec.More() {
				t.Errorf("JSON() has more than one value: %q", b)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("JSON() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRunArgs(t *testing.T) {
	for _, tc := range []struct {
		args          []string
		script, stage string
	}{
		{[]string{"/tmp/s", "build_script"}, "/tmp/s", "build_script"},
		{[]string{"--flag", "x", "/tmp/s", "step_release"}, "/tmp/s", "step_release"},
		{[]string{"/tmp/s"}, "/tmp/s", ""},
	} {
		script, stage, err := RunArgs(tc.args)
		if err != nil || script != tc.script || stage != tc.stage {
			t.Errorf("RunArgs(%q) = %q, %q, %v; want %q, %q", tc.args, script, stage, err, tc.script, tc.stage)
		}
	}
	if _, _, err := RunArgs(nil); err == nil {
		t.Error("RunArgs(nil) succeeded")
	}
}
