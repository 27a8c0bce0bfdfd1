// Package runstage is the wiring of the run stage that both executables
// share: cmd/nspawn-runner's run and cmd/nspawn-runner-stage, the small
// executable that `nspawn-runner toml` names as run_exec when it is
// installed. It parses the run stage's command line, reads what the stage
// needs of the configuration file without a YAML library, works out the
// job and maps the script's exit to the executor contract; package stage
// does the stage itself. Like stage, it links nothing but the standard
// library, golang.org/x/sys and sys/* (layout_test.go).
package runstage
