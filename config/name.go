package config

import "fmt"

// ImageNameRule is the rule every image name follows, quoted in errors.
const ImageNameRule = "[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"

// CheckImageName refuses a name that is not a plain image name: a path, a
// leading dot (reserved for internal use), "..", control characters, or
// more than 64 characters.
func CheckImageName(name string) error {
	if name == "" {
		return fmt.Errorf("invalid image name %q: empty; names match %s", name, ImageNameRule)
	}
	if len(name) > 64 {
		return fmt.Errorf("invalid image name %q: longer than 64 characters; names match %s", name[:64]+"...", ImageNameRule)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '.' || c == '_' || c == '+' || c == '-'
		}
		if !ok {
			return fmt.Errorf("invalid image name %q: names match %s (no '/', no leading '.' or '-', no spaces or control characters)", name, ImageNameRule)
		}
	}
	return nil
}
