package integration

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

// This file writes stage scripts the way gitlab-runner's bash shell does
// (shells/bash.go upstream): a `#!/usr/bin/env bash` script with
// `set -eo pipefail` whose body is one ANSI-C quoted string evaluated in a
// pipeline, exporting every job variable and then running the stage's
// commands. The eval runs in a subshell, as with the runner's
// FF_USE_NEW_BASH_EVAL_STRATEGY: without it bash 5 reports a failing
// command inside `: | eval` as exit code 1, and a job's own code (say 42)
// would never reach the executor. Values therefore travel inside the script, not the
// environment, exactly as with the real runner.

// Var is one job variable.
type Var struct{ Key, Value string }

// ansiC quotes s as a bash $'...' string. UTF-8 passes through as bytes;
// control characters become \xNN so the script stays one printable line.
func ansiC(s string) string {
	var b strings.Builder
	b.WriteString("$'")
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\\':
			b.WriteString(`\\`)
		case '\'':
			b.WriteString(`\'`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if c < 0x20 || c == 0x7f {
				fmt.Fprintf(&b, `\x%02x`, c)
				continue
			}
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// stageScript returns the script run_exec gets for one stage: the exports
// of vars, then the commands (already shell text). Like the runner, user
// commands are echoed in green before they run.
func stageScript(vars []Var, cmds []string) string {
	var body strings.Builder
	sorted := append([]Var(nil), vars...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Key < sorted[j].Key })
	for _, v := range sorted {
		fmt.Fprintf(&body, "export %s=%s\n", v.Key, ansiC(v.Value))
	}
	for _, c := range cmds {
		body.WriteString(c)
		body.WriteByte('\n')
	}
	return "#!/usr/bin/env bash\n\nset -eo pipefail\nset +o noclobber\n: | (eval " + ansiC(body.String()) + ")\nexit 0\n"
}

// userCommands turns .gitlab-ci.yml script lines into the runner's form:
// cd into the project, echo each command, run it.
func userCommands(lines []string) []string {
	out := []string{`cd "$CI_PROJECT_DIR"`}
	for _, l := range lines {
		out = append(out, "echo "+ansiC("\x1b[32;1m$ "+l+"\x1b[0;m"), l)
	}
	return out
}

// runnerCall is a call of gitlab-runner inside the job environment as the
// runner's cache and artifact stages make it, with the runner's message
// when the binary is missing.
func runnerCall(what string, args ...string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = ansiC(a)
	}
	return []string{
		`cd "$CI_PROJECT_DIR"`,
		`if [[ -x "$(command -v gitlab-runner)" ]]; then`,
		`  gitlab-runner ` + strings.Join(q, " "),
		`else`,
		`  echo "Missing gitlab-runner. ` + what + ` is disabled."`,
		`fi`,
	}
}

// cacheFile is the cache archive path as the runner passes it: relative to
// the project dir, under the cache dir, per project path and cache key.
func cacheFile(projectDir, cacheDir, projectPath, key string) string {
	rel, err := filepath.Rel(projectDir, filepath.Join(cacheDir, projectPath, key, "cache.zip"))
	if err != nil {
		panic(err)
	}
	return rel
}

// standIn is the stand-in gitlab-runner used as gitlab.runner_binary: it
// runs inside the machine, prints its argv, and for the artifact uploader
// the files it was given (base64), so the job log proves what it saw. Its
// cache commands keep a tar file at --file, enough to carry a cache from
// one job to the next.
const standIn = `#!/bin/bash
set -eu
printf 'STANDIN argv:'; printf ' [%s]' "$@"; printf '\n'
cmd=$1; shift
file=; paths=()
while [ $# -gt 0 ]; do
	case $1 in
	--file) file=$2; shift 2;;
	--path) paths+=("$2"); shift 2;;
	*) shift;;
	esac
done
case $cmd in
cache-archiver)
	found=()
	for p in "${paths[@]}"; do if [ -e "$p" ]; then found+=("$p"); else echo "WARNING: $p: no matching files"; fi; done
	if [ ${#found[@]} -eq 0 ]; then echo "STANDIN nothing to archive"; exit 0; fi
	mkdir -p "$(dirname "$file")"
	tar -cf "$file" "${found[@]}"
	echo "STANDIN archived $file";;
cache-extractor)
	if [ -f "$file" ]; then tar -xf "$file"; echo "STANDIN extracted $file"; else echo "STANDIN no cache at $file"; fi;;
artifacts-uploader)
	for p in "${paths[@]}"; do printf 'STANDIN saw %s %s\n' "$p" "$(base64 -w0 < "$p")"; done;;
artifacts-downloader)
	echo "STANDIN nothing to download";;
*)
	echo "STANDIN unknown command $cmd" >&2; exit 1;;
esac
`
