#!/bin/bash
# From a fresh Debian 12 machine (as root) to a base image and a real CI job
# run end to end through the executor stages.
#
#   sudo make demo      (or: sudo ./scripts/demo.sh)
#
# Environment: NSPAWN_RUNNER_ROOT (default /var/lib/nspawn-runner),
# LOOPBACK_SIZE (default 8G: the btrfs file used when the root is not on btrfs).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${NSPAWN_RUNNER_ROOT:-/var/lib/nspawn-runner}
LOOPBACK_SIZE=${LOOPBACK_SIZE:-8G}
BIN=$PWD/bin/nspawn-runner

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	echo "demo.sh: run me as root (sudo make demo)" >&2
	exit 1
fi

step "installing the Debian packages nspawn-runner needs"
export DEBIAN_FRONTEND=noninteractive
need=(systemd-container debootstrap btrfs-progs libbtrfs-dev eatmydata ansible make gcc git ca-certificates)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}"
else
	echo "all installed: ${need[*]}"
fi

step "building nspawn-runner"
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "demo.sh: Go 1.26 or later is needed to build; install the official Go release in /usr/local/go and run me again" >&2
	exit 1
fi
make -s build

step "preparing the image root $ROOT"
# The nearest existing directory tells which filesystem the root will be on.
probe=$ROOT
while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
fstype=$(stat -f -c %T "$probe")
if [ "$fstype" = btrfs ] || [ -z "$(ls -A "$ROOT" 2>/dev/null | grep -v -e '^\.lock$' -e '^\.meta$' || true)" ]; then
	# On btrfs already: nothing to mount (or our loopback file is, and setup
	# says so). Not btrfs and nothing there yet: a loopback btrfs file gives
	# images as subvolumes and jobs instant snapshots; setup prints the
	# fstab line that mounts it at boot.
	"$BIN" --root "$ROOT" setup --loopback "$LOOPBACK_SIZE"
else
	echo "$ROOT is on $fstype and already holds images: keeping it (images are directories, jobs use overlayfs)"
	"$BIN" --root "$ROOT" setup
fi

step "creating the base image bookworm"
if [ -d "$ROOT/bookworm" ]; then
	echo "bookworm exists already"
else
	"$BIN" --root "$ROOT" chroot-create bookworm --suite bookworm
fi
"$BIN" --root "$ROOT" chroot-list

step "entering it"
echo -n "Debian version in the image: "
# systemd-nspawn says it cannot remove its propagation directory where /run
# is not a tmpfs (some containers and VMs): harmless, not shown.
"$BIN" --root "$ROOT" chroot-login bookworm -- cat /etc/debian_version 2> >(grep -v -e '/run/systemd/nspawn/propagate' >&2)

# job
step "running a CI job end to end, as gitlab-runner calls the executor"
# gitlab-runner runs every stage in a per-job temporary directory with these
# variables; the stage scripts below are bash in its style.
job=$(mktemp -d)
id=$((100000 + $$))
# The job payload gitlab-runner hands every stage (JOB_RESPONSE_FILE): the
# job's identity and its project, from which the machine's name and the
# project's cache directory come.
cat > "$job/job.json" <<JOB
{"id": $id, "token": "demo-token", "allow_git_fetch": true,
 "job_info": {"name": "build", "stage": "test", "project_id": 1, "project_name": "hello"},
 "git_info": {"repo_url": "https://gitlab-ci-token:demo-token@gitlab.example.com/demo/hello.git", "ref": "main",
              "sha": "0123456789abcdef0123456789abcdef01234567", "ref_type": "branch", "depth": 20},
 "runner_info": {"timeout": 3600}, "variables": [],
 "steps": [{"name": "script", "script": ["make"], "timeout": 3600, "when": "on_success"}]}
JOB
export JOB_RESPONSE_FILE="$job/job.json"
if ! command -v gitlab-runner >/dev/null; then
	echo "(gitlab-runner is not installed here: the job runs, without caches and artifacts)"
fi
cleanup() {
	"$BIN" --root "$ROOT" cleanup >/dev/null 2>&1 || true
	rm -rf "$job"
}
trap cleanup EXIT
cd "$job"
export BUILD_FAILURE_EXIT_CODE=1 SYSTEM_FAILURE_EXIT_CODE=2 BUILD_EXIT_CODE_FILE="$job/exit-code"
nr() { "$BIN" --root "$ROOT" "$@"; }

echo "--- config_exec"
nr gitlab-config
echo "--- prepare_exec"
nr prepare bookworm 2> >(grep -v -e 'caches and artifacts are disabled' >&2)

stage() { # stage NAME SCRIPT: write the script and run it as run_exec does
	printf '#!/usr/bin/env bash\nset -eo pipefail\n%s\n' "$2" > "$job/script-$1"
	echo "--- run_exec $1"
	nr run "$job/script-$1" "$1"
}
stage get_sources 'mkdir -p /builds/demo && cd /builds/demo && git init -q . && printf "all:\n\techo built by \$\$(hostname) > out.txt\n" > Makefile && echo "fetched into $PWD"'
stage build_script 'cd /builds/demo && echo "Debian $(cat /etc/debian_version), systemd says: $(systemctl is-system-running || true)" && apt-get --version | head -1 && (command -v make >/dev/null || echo built by $(hostname) > out.txt)'
stage after_script 'cat /builds/demo/out.txt'

echo "--- a failing stage: the script's own code reaches BUILD_EXIT_CODE_FILE"
set +e
stage build_script 'echo failing on purpose; exit 42'
rc=$?
set -e
echo "run_exec exited $rc (BUILD_FAILURE_EXIT_CODE=1), BUILD_EXIT_CODE_FILE says $(cat "$job/exit-code")"
[ "$rc" -eq 1 ] && [ "$(cat "$job/exit-code")" = 42 ]

echo "--- the machine while the job runs"
nr ps
echo "--- cleanup_exec"
nr cleanup
trap - EXIT
rm -rf "$job"
cd "$OLDPWD"
echo
echo "demo passed: a job ran in its own machine from image bookworm, and the machine is gone"
