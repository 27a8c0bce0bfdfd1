#!/bin/bash
# Runs inside the VM (started by nr-vm-suite.service through nr-vm-boot,
# from the host's 9p share /mnt/inputs): waits for the boot to finish,
# mounts the cached job image (second disk), runs the guest tests with
# their output on the second serial port, prints the exit marker the host
# waits for, and powers off.
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null
exec >"$out" 2>&1
in=/mnt/inputs
. "$in/env"
echo "nr-vm-suite: guest userspace up at $(cut -d' ' -f1 /proc/uptime)s (profile $PROFILE, $(systemctl --version | head -n 1), $(uname -r))"
state=$(systemctl is-system-running --wait)
echo "nr-vm-suite: system $state at $(cut -d' ' -f1 /proc/uptime)s"
[ "$state" = running ] || systemctl --failed --no-pager

rc=0
cache=/var/cache/nspawn-runner-test
mkdir -p "$cache/$IMAGE_DIR"
udevadm wait --timeout=60 /dev/vdb && mount -o ro /dev/vdb "$cache/$IMAGE_DIR" || {
	echo "nr-vm-suite: the job image disk /dev/vdb did not appear or does not mount"
	rc=3
}
if [ "$rc" = 0 ]; then
	mkdir -p /var/tmp/nr-vm
	cd /var/tmp/nr-vm
	start=$(cut -d' ' -f1 /proc/uptime)
	env CI=true NSPAWN_RUNNER_VM_GUEST="$PROFILE" NSPAWN_RUNNER_TEST_BINARY="$in/nspawn-runner" \
		NSPAWN_RUNNER_TEST_CACHE="$cache" TMPDIR=/var/tmp/nr-vm PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		"$in/integration.test" -test.v -test.count=1 -test.timeout "${GUEST_TIMEOUT:-40m}" -test.run "$TESTS"
	rc=$?
	echo "nr-vm-suite: suite took $(awk -v s="$start" '{printf "%.0f", $1 - s}' /proc/uptime)s"
	if [ "$rc" != 0 ]; then
		echo "nr-vm-suite: guest journal, warnings and worse:"
		journalctl -b --no-pager -p warning | tail -n 80
	fi
fi
echo "nr-vm-suite: exit $rc"
sync
systemctl poweroff --no-block
