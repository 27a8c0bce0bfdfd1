package bootstrap

import (
	"fmt"
	"io"
	"strings"
)

// Phase is a stage of debootstrap, read from its "I:" lines.
type Phase int

// Phases in the order debootstrap(8) goes through them. PhaseUnpack and
// PhaseConfigure come twice: once for the required packages, once for the
// base system.
const (
	PhaseNone      Phase = iota
	PhaseIndex           // release files, package lists, dependency resolution
	PhaseRetrieve        // downloading and validating .deb files
	PhaseExtract         // extracting the required packages
	PhaseInstall         // installing the core packages
	PhaseUnpack          // dpkg --unpack
	PhaseConfigure       // dpkg --configure
	PhaseDone            // "Base system installed successfully."
	PhaseMessage         // a W: or E: line, shown as it is
)

var phaseNames = [...]string{
	PhaseNone:      "",
	PhaseIndex:     "reading the package lists",
	PhaseRetrieve:  "retrieving packages",
	PhaseExtract:   "extracting packages",
	PhaseInstall:   "installing core packages",
	PhaseUnpack:    "unpacking packages",
	PhaseConfigure: "configuring packages",
	PhaseDone:      "base system installed",
	PhaseMessage:   "",
}

func (p Phase) String() string {
	if p >= 0 && int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Event is what one line of debootstrap's output says.
type Event struct {
	Phase Phase
	// Package is the package the line is about ("adduser"), empty for
	// lines about the whole phase.
	Package string
	// Text is the line itself for PhaseMessage ("W: ..."), and what a
	// line announcing a phase says ("unpacking the base system").
	Text string
}

// indexFiles are the release and list files debootstrap retrieves and
// validates before any package.
var indexFiles = map[string]bool{"InRelease": true, "Release": true, "Release.gpg": true, "Packages": true}

// ParseLine reads one line of debootstrap's output. ok is false for lines
// that say nothing about progress (dpkg's own chatter, blank lines).
func ParseLine(line string) (ev Event, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "W: "), strings.HasPrefix(line, "E: "):
		return Event{Phase: PhaseMessage, Text: strings.TrimSpace(line)}, true
	case !strings.HasPrefix(line, "I: "):
		return Event{}, false
	}
	msg := strings.TrimSpace(line[3:])
	verb, rest, _ := strings.Cut(msg, " ")
	rest = strings.TrimSpace(strings.TrimSuffix(rest, "..."))
	pkg := func() string {
		f := strings.Fields(rest)
		if len(f) == 0 {
			return ""
		}
		return f[0]
	}
	switch verb {
	case "Retrieving", "Validating":
		if p := pkg(); p != "" && !indexFiles[p] {
			return Event{Phase: PhaseRetrieve, Package: p}, true
		}
		return Event{Phase: PhaseIndex}, true
	case "Checking", "Valid", "Resolving", "Found":
		return Event{Phase: PhaseIndex}, true
	case "Extracting":
		return Event{Phase: PhaseExtract, Package: pkg()}, true
	case "Installing":
		return Event{Phase: PhaseInstall}, true
	case "Unpacking", "Configuring":
		ph := PhaseUnpack
		if verb == "Configuring" {
			ph = PhaseConfigure
		}
		// "Unpacking required packages", "Unpacking the base system"
		// announce the phase; "Unpacking adduser" is one package.
		if strings.Contains(rest, " ") {
			return Event{Phase: ph, Text: strings.ToLower(verb) + " " + rest}, true
		}
		return Event{Phase: ph, Package: pkg()}, true
	case "Base":
		if strings.HasPrefix(rest, "system installed") {
			return Event{Phase: PhaseDone}, true
		}
	}
	return Event{}, false
}

// progress turns events into output: a line per phase, and a live
// single-line display of the package being handled when interactive.
type progress struct {
	w           io.Writer
	interactive bool
	phase       Phase
	count       int // packages handled in the current phase
	retrieved   int // packages downloaded: the total of the later phases
	live        bool
	lastPkg     string
}

func (p *progress) event(ev Event) {
	if p.w == nil {
		return
	}
	if ev.Phase == PhaseMessage {
		p.clear()
		fmt.Fprintf(p.w, "debootstrap: %s\n", ev.Text)
		return
	}
	if ev.Phase != p.phase {
		p.clear()
		if p.phase == PhaseRetrieve {
			fmt.Fprintf(p.w, "debootstrap: retrieved %d packages\n", p.retrieved)
		}
		p.phase, p.count = ev.Phase, 0
		head := ev.Phase.String()
		if ev.Text != "" {
			head = ev.Text
		}
		fmt.Fprintf(p.w, "debootstrap: %s\n", head)
	}
	if ev.Package == "" {
		return
	}
	if ev.Phase == PhaseRetrieve {
		// Each package is retrieved, then validated: count it once.
		if p.count == 0 || p.lastPkg != ev.Package {
			p.count++
			p.retrieved++
		}
	} else {
		p.count++
	}
	p.lastPkg = ev.Package
	if !p.interactive {
		return
	}
	total := ""
	if ev.Phase != PhaseRetrieve && p.retrieved > 0 {
		total = fmt.Sprintf("/%d", p.retrieved)
	}
	// \r and "erase to end of line" (ECMA-48 EL) redraw one line in place.
	fmt.Fprintf(p.w, "\r\x1b[K  %s %d%s %s", ev.Phase, p.count, total, ev.Package)
	p.live = true
}

// clear ends the live line so that the next line starts clean.
func (p *progress) clear() {
	if p.live {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.live = false
	}
}
