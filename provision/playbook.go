package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// Playbook extensions, in the order they win within one directory.
var playbookExts = []string{".yaml", ".yml"}

// Discovery is what the playbook directories hold.
type Discovery struct {
	// Playbooks maps an image name to the path of its playbook.
	Playbooks map[string]string
	// Warnings are for the caller to log: ignored files and duplicates.
	Warnings []string
}

// Discover finds the image playbooks (NAME.yaml or NAME.yml) in dirs,
// searched in order: the first playbook found for a name wins and later
// ones are reported as warnings. A directory that does not exist holds no
// playbooks; one that cannot be read is an error.
func Discover(dirs []string) (Discovery, error) {
	d := Discovery{Playbooks: map[string]string{}}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Discovery{}, fmt.Errorf("read playbook directory %s: %w", dir, err)
		}
		// ReadDir sorts by name, so NAME.yaml comes before NAME.yml.
		for _, e := range entries {
			name, ok := playbookName(e.Name())
			if !ok {
				continue
			}
			path := filepath.Join(dir, e.Name())
			// Follow symlinks: an admin may link playbooks from elsewhere.
			fi, err := os.Stat(path)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			if err := config.CheckImageName(name); err != nil {
				d.Warnings = append(d.Warnings, fmt.Sprintf("ignoring playbook %s: %v", path, err))
				continue
			}
			if first, dup := d.Playbooks[name]; dup {
				d.Warnings = append(d.Warnings, fmt.Sprintf("ignoring playbook %s: image %s already has %s", path, name, first))
				continue
			}
			d.Playbooks[name] = path
		}
	}
	return d, nil
}

// playbookName is the image name of a playbook file name, and whether the
// file is a playbook at all. Hidden files (editor backups, our own
// temporary files) are not.
func playbookName(file string) (string, bool) {
	if strings.HasPrefix(file, ".") {
		return "", false
	}
	for _, ext := range playbookExts {
		if name, ok := strings.CutSuffix(file, ext); ok && name != "" {
			return name, true
		}
	}
	return "", false
}

// Names returns the image names of a discovery, sorted.
func (d Discovery) Names() []string {
	names := make([]string, 0, len(d.Playbooks))
	for n := range d.Playbooks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// The nspawn_runner_* variables a playbook's first play may set.
const (
	VarSuite    = "nspawn_runner_chroot_suite"
	VarRecreate = "nspawn_runner_maint_recreate"
	VarMirror   = "nspawn_runner_mirror"
	VarInclude  = "nspawn_runner_include"
	// VarServicePorts are the TCP ports a service image listens on: a
	// job's services: are ready once they accept connections.
	VarServicePorts = "nspawn_runner_service_ports"
)

const varPrefix = "nspawn_runner_"

// Vars are the nspawn_runner_* variables of a playbook. Zero values mean
// "not set": the caller falls back to flags and configuration.
type Vars struct {
	// Suite is the Debian suite to create the image from.
	Suite string
	// Recreate makes chroot-maintenance build the image from scratch
	// every time instead of updating a copy of it.
	Recreate bool
	// Mirror is the debootstrap mirror.
	Mirror string
	// Include are extra packages for debootstrap.
	Include []string
	// ServicePorts are the TCP ports the image serves on as a service;
	// kept in its metadata.
	ServicePorts []int
}

// ParseVars reads the nspawn_runner_* variables from the vars of a
// playbook's first play. Only a YAML syntax error is an error: a playbook
// ansible would reject, or a variable of the wrong type, is reported in
// the warnings (and the variable ignored), because ansible-playbook itself
// says more precisely what is wrong when it runs.
func ParseVars(data []byte) (Vars, []string, error) {
	var v Vars
	var warn []string
	warnf := func(format string, args ...any) { warn = append(warn, fmt.Sprintf(format, args...)) }

	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Vars{}, nil, fmt.Errorf("parse playbook: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		warnf("the playbook is empty")
		return v, warn, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		warnf("the playbook is empty")
		return v, warn, nil
	}
	if root.Kind != yaml.SequenceNode {
		warnf("line %d: the playbook is not a list of plays", root.Line)
		return v, warn, nil
	}
	if len(root.Content) == 0 {
		warnf("the playbook has no plays")
		return v, warn, nil
	}
	if len(root.Content) > 1 {
		warnf("the playbook has %d plays: only the vars of the first play are read", len(root.Content))
	}
	play := root.Content[0]
	if play.Kind != yaml.MappingNode {
		warnf("line %d: the first play is not a mapping", play.Line)
		return v, warn, nil
	}
	vars := mapValue(play, "vars")
	if vars == nil {
		return v, warn, nil
	}
	if vars.Kind == yaml.ScalarNode && vars.Tag == "!!null" {
		return v, warn, nil
	}
	if vars.Kind != yaml.MappingNode {
		warnf("line %d: vars of the first play is not a mapping", vars.Line)
		return v, warn, nil
	}
	for i := 0; i+1 < len(vars.Content); i += 2 {
		key, val := vars.Content[i], vars.Content[i+1]
		if !strings.HasPrefix(key.Value, varPrefix) {
			continue
		}
		if val.Kind == yaml.AliasNode && val.Alias != nil {
			val = val.Alias
		}
		switch key.Value {
		case VarSuite:
			v.Suite = checkedString(key, val, "a Debian suite like bookworm", "a Debian suite name", config.CheckSuite, warnf)
		case VarRecreate:
			b, ok := boolVar(val)
			if !ok {
				warnf("line %d: %s must be true or false; ignored", key.Line, key.Value)
			} else {
				v.Recreate = b
			}
		case VarMirror:
			v.Mirror = checkedString(key, val, "a mirror URL", "a mirror URL", config.CheckMirror, warnf)
		case VarInclude:
			pkgs, ok := listVar(val)
			if !ok {
				warnf("line %d: %s must be a list of packages or a comma-separated string; ignored", key.Line, key.Value)
				continue
			}
			for _, p := range pkgs {
				if config.CheckPackage(p) != nil {
					warnf("line %d: %s: %q is not a Debian package name; ignored", key.Line, key.Value, p)
					continue
				}
				v.Include = append(v.Include, p)
			}
		case VarServicePorts:
			ports, ok := portsVar(val)
			if !ok {
				warnf("line %d: %s must be a list of TCP ports (1-65535); ignored", key.Line, key.Value)
				continue
			}
			v.ServicePorts = ports
		default:
			warnf("line %d: unknown variable %s (known: %s, %s, %s, %s, %s)", key.Line, key.Value, VarSuite, VarRecreate, VarMirror, VarInclude, VarServicePorts)
		}
	}
	return v, warn, nil
}

// ReadVars reads and parses the vars of the playbook at path.
func ReadVars(path string) (Vars, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Vars{}, nil, fmt.Errorf("read playbook: %w", err)
	}
	v, warn, err := ParseVars(data)
	if err != nil {
		return Vars{}, nil, fmt.Errorf("playbook %s: %w", path, err)
	}
	for i := range warn {
		warn[i] = "playbook " + path + ": " + warn[i]
	}
	return v, warn, nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// stringVar accepts a plain string scalar. A Jinja expression is refused:
// it only has a value when ansible evaluates it.
func stringVar(n *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" || strings.Contains(n.Value, "{{") {
		return "", false
	}
	return strings.TrimSpace(n.Value), true
}

// boolVar accepts YAML booleans and the YAML 1.1 spellings ansible reads
// as booleans (yes/no/on/off), which yaml.v3 leaves as strings.
func boolVar(n *yaml.Node) (bool, bool) {
	if n.Kind != yaml.ScalarNode {
		return false, false
	}
	switch n.Tag {
	case "!!bool", "!!str":
		switch strings.ToLower(strings.TrimSpace(n.Value)) {
		case "true", "yes", "on", "y":
			return true, true
		case "false", "no", "off", "n":
			return false, true
		}
	}
	return false, false
}

// listVar accepts a list of strings or one comma-separated string.
func listVar(n *yaml.Node) ([]string, bool) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, true
		}
		s, ok := stringVar(n)
		if !ok {
			return nil, false
		}
		var out []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out, true
	case yaml.SequenceNode:
		out := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			s, ok := stringVar(c)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// portsVar accepts a list of TCP port numbers, one number, or a
// comma-separated string of them.
func portsVar(n *yaml.Node) ([]int, bool) {
	var items []string
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, true
		}
		if n.Tag != "!!int" && n.Tag != "!!str" {
			return nil, false
		}
		items = strings.Split(n.Value, ",")
	case yaml.SequenceNode:
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode || c.Tag != "!!int" && c.Tag != "!!str" {
				return nil, false
			}
			items = append(items, c.Value)
		}
	default:
		return nil, false
	}
	var out []int
	for _, it := range items {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		p, err := strconv.Atoi(it)
		if err != nil || p < 1 || p > 65535 {
			return nil, false
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, true
}

// checkedString returns the string value of a variable that check accepts,
// and "" after a warning naming the line when it is not a string or check
// refuses it.
func checkedString(key, val *yaml.Node, want, notA string, check func(string) error, warnf func(string, ...any)) string {
	s, ok := stringVar(val)
	if !ok {
		warnf("line %d: %s must be a string (%s); ignored", key.Line, key.Value, want)
		return ""
	}
	if check(s) != nil {
		warnf("line %d: %s: %q is not %s; ignored", key.Line, key.Value, s, notA)
		return ""
	}
	return s
}
