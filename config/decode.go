package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrUnknownKey is the cause of a KeyError for a key the schema does not
// have (a typo, or a setting of another version).
var ErrUnknownKey = errors.New("unknown key")

// KeyError is a problem with one key of the configuration: where it is
// (yaml.v3's node position) and what is wrong. Err keeps the cause's chain:
// a *yaml.TypeError for a value of the wrong kind, ErrUnknownKey, the
// error of Size or Duration, or a validation error.
type KeyError struct {
	Line int    // 1-based; 0 when the key is not in the document
	Key  string // dotted: "machine.mode"; "" for the document itself
	Msg  string // what is wrong, when Err alone does not say it
	Err  error
}

func (e *KeyError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	switch {
	case e.Msg != "":
		b.WriteString(e.Msg)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *KeyError) Unwrap() error { return e.Err }

// decodeNode decodes the mapping n into the struct out key by key, so
// that every error carries the key's dotted name and its line from the
// node, and yaml.v3's own error stays the cause. Unknown and repeated keys
// are errors (what yaml.v3's KnownFields and its duplicate check do for a
// whole document). prefix is the dotted name of n ("" at the top).
func decodeNode(n *yaml.Node, out reflect.Value, prefix string) error {
	n = resolveAlias(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "machine:" with nothing below it: the defaults
	}
	if n.Kind != yaml.MappingNode {
		return &KeyError{Line: n.Line, Key: prefix, Msg: "want a mapping of settings, got " + kindName(n)}
	}
	fields := yamlFields(out.Type())
	seen := map[string]int{}
	// Merge keys ("<<: *defaults") first: explicit keys override them, as
	// in YAML 1.1's merge key type.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Tag == "!!merge" {
			v := resolveAlias(n.Content[i+1])
			merged := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				merged = v.Content
			}
			for _, m := range merged {
				if err := decodeNode(m, out, prefix); err != nil {
					return err
				}
			}
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Tag == "!!merge" {
			continue
		}
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		if first, ok := seen[k.Value]; ok {
			return &KeyError{Line: k.Line, Key: key, Msg: fmt.Sprintf("set twice (first on line %d): keep one", first)}
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			return &KeyError{Line: k.Line, Key: key, Msg: fmt.Sprintf("unknown key (this section has: %s)", knownKeys(out.Type())), Err: ErrUnknownKey}
		}
		f := out.Field(idx)
		if f.Kind() == reflect.Struct && !implementsUnmarshaler(f) {
			if err := decodeNode(v, f, key); err != nil {
				return err
			}
			continue
		}
		if err := v.Decode(f.Addr().Interface()); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				// yaml.v3's message repeats the line and names a Go type;
				// say instead what the key wants, from the field's type.
				return &KeyError{Line: k.Line, Key: key, Msg: fmt.Sprintf("want %s, got %s", wantName(f.Type()), gotName(resolveAlias(v))), Err: err}
			}
			return &KeyError{Line: k.Line, Key: key, Err: err}
		}
	}
	return nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func implementsUnmarshaler(v reflect.Value) bool {
	_, ok := v.Addr().Interface().(yaml.Unmarshaler)
	return ok
}

// yamlFields maps the yaml names of t's fields to their index.
func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			m[name] = i
		}
	}
	return m
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func knownKeys(t reflect.Type) string {
	var names []string
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			names = append(names, name)
		}
	}
	return strings.Join(names, ", ")
}

// wantName says in an admin's words what a field of type t holds.
func wantName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean (true or false)"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(wantName(t.Elem()), "a ") + "s"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	}
	return t.String()
}

// gotName describes what the document has at n.
func gotName(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return fmt.Sprintf("%q", n.Value)
	}
	return kindName(n)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "something else"
}
