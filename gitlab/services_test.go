package gitlab

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// checkImageName is config.CheckImageName's rule (gitlab imports
// nothing of ours).
func checkImageName(n string) error {
	if n == "" || len(n) > 64 || n[0] == '.' || n[0] == '-' || strings.ContainsAny(n, "/ :") {
		return errors.New("invalid image name")
	}
	return nil
}

func TestServiceImageSelection(t *testing.T) {
	existing := []string{"postgres", "postgres-16", "redis", "bookworm", "secret"}
	allowed := []string{"postgres", "postgres-16", "redis", "bookworm"}
	for _, tc := range []struct {
		name, want string
	}{
		{"postgres:16", "postgres-16"},
		{"postgres:15", "postgres"},
		{"postgres", "postgres"},
		{"postgres:latest", "postgres"},
		{"registry.example.com/group/postgres:16", "postgres-16"},
		{"registry.example.com:5000/lib/redis:7", "redis"},
		{"redis@sha256:0123abcd", "redis"},
		{"docker.io/library/redis:7@sha256:0123", "redis"},
	} {
		got, err := SelectServiceImage(tc.name, checkImageName, existing, allowed)
		if err != nil || got != tc.want {
			t.Errorf("SelectServiceImage(%q) = %q, %v, want %q", tc.name, got, err, tc.want)
		}
	}
	// Refused: nothing selected (the message lists the images), outside
	// the allowlist, hostile names.
	for _, name := range []string{"mysql:8", "secret", "secret:1", "../x", "a/../b", "./redis", "/redis", "redis/", ".hidden", "red is", "redis\n", "-x", "x;rm", strings.Repeat("a", 300), ""} {
		got, err := SelectServiceImage(name, checkImageName, existing, allowed)
		if err == nil {
			t.Errorf("SelectServiceImage(%q) = %q, want an error", name, got)
			continue
		}
		var ie *ImageError
		if errors.As(err, &ie) {
			msg := err.Error()
			if !strings.Contains(msg, "bookworm, postgres, postgres-16, redis") || strings.Contains(msg, "secret,") {
				t.Errorf("SelectServiceImage(%q) error %q does not list exactly the allowed images", name, msg)
			}
		}
	}
	_, err := SelectServiceImage("mysql:8", checkImageName, existing, allowed)
	if want := `service "mysql:8" selects no image: "mysql-8" or "mysql" does not exist; images available to jobs: bookworm, postgres, postgres-16, redis`; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

func TestDerivedAliases(t *testing.T) {
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"registry.example.com/group/img:tag", []string{"registry.example.com__group__img", "registry.example.com-group-img"}},
		{"tutum/wordpress:latest", []string{"tutum__wordpress", "tutum-wordpress"}},
		{"postgres:16", []string{"postgres"}},
		{"redis", []string{"redis"}},
		// A registry port makes a name that is no host name: left out.
		{"registry.example.com:5000/img", nil},
	} {
		if got := DerivedAliases(tc.name); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("DerivedAliases(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSelectServices(t *testing.T) {
	env := map[string]string{
		"CUSTOM_ENV_CI_JOB_SERVICES": `[{"name":"registry.example.com/group/postgres:16","alias":"db, pg,db","entrypoint":null,"command":null},` +
			`{"name":"redis","alias":"","entrypoint":["/usr/bin/redis-server"],"command":["--port","6380"],"variables":[{"key":"X","value":"1"}]}]`,
	}
	c := ServiceChoice{CheckName: checkImageName, Existing: func() ([]string, error) { return []string{"postgres-16", "redis"}, nil }}
	got, err := SelectServices(func(k string) string { return env[k] }, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{
		{Name: "registry.example.com/group/postgres:16", Image: "postgres-16", Aliases: []string{"db", "pg", "registry.example.com__group__postgres", "registry.example.com-group-postgres"}},
		{Name: "redis", Image: "redis", Aliases: []string{"redis"}, Command: []string{"/usr/bin/redis-server", "--port", "6380"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SelectServices = %+v\nwant %+v", got, want)
	}
	for _, raw := range []string{"", "null", " "} {
		env["CUSTOM_ENV_CI_JOB_SERVICES"] = raw
		if got, err := SelectServices(func(k string) string { return env[k] }, c); err != nil || got != nil {
			t.Errorf("SelectServices(%q) = %v, %v, want none", raw, got, err)
		}
	}
	for _, raw := range []string{
		`{"name":"redis"}`,
		`[{"name":"redis","alias":"a\nb"}]`,
		`[{"name":"redis","alias":"x#y"}]`,
		`[{"name":"redis","alias":"localhost"}]`,
		`[{"name":"redis","alias":"-x"}]`,
		`[{"name":"../redis"}]`,
		`[{"name":"postgres"}]`,
		`[` + strings.Repeat(`{"name":"redis"},`, MaxServices) + `{"name":"redis"}]`,
	} {
		env["CUSTOM_ENV_CI_JOB_SERVICES"] = raw
		if got, err := SelectServices(func(k string) string { return env[k] }, c); err == nil {
			t.Errorf("SelectServices(%q) = %v, want an error", raw, got)
		}
	}
}

func TestJobVariables(t *testing.T) {
	got := JobVariables([]string{"PATH=/bin", "CUSTOM_ENV_A=1", "CUSTOM_ENV_B=x=y", "CUSTOM_ENV_=no", "CUSTOM_ENV_C=", "CUSTOM_ENV_D"})
	if want := []string{"A=1", "B=x=y", "C="}; !reflect.DeepEqual(got, want) {
		t.Errorf("JobVariables = %q, want %q", got, want)
	}
}

func FuzzServiceName(f *testing.F) {
	for _, s := range []string{"postgres:16", "a/b/c:d@sha256:1", "../x", "x:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		img, err := SelectServiceImage(name, checkImageName, []string{"x", "postgres-16"}, nil)
		if err == nil && checkImageName(img) != nil {
			t.Errorf("SelectServiceImage(%q) = %q, not an image name", name, img)
		}
		for _, a := range DerivedAliases(name) {
			if CheckAlias(a) != nil || strings.ContainsAny(a, " \t\n#") {
				t.Errorf("DerivedAliases(%q) has %q", name, a)
			}
		}
	})
}
