#!/bin/bash
# Runs inside the VM (started by nr-vm-suite.service through nr-vm-boot,
# from the host's 9p share /mnt/inputs): waits for the boot to finish,
# mounts the cached job image (second disk), runs the guest tests with
# their output on the second serial port, prints the exit marker the host
# waits for, and powers off.
#
# Reboots: a test that needs one (TestVMReboot) leaves $state behind. Then
# this script prints "nr-vm-suite: reboot" instead of the exit marker and
# resets the machine at once (sysrq b: a crash, not a clean shutdown); the
# host boots the same disk again, and on that boot only TestVMReboot runs
# (it finds $state and checks what survived). The exit marker carries the
# worst status of all boots.
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null
exec >"$out" 2>&1
in=/mnt/inputs
. "$in/env"
state=/var/lib/nr-vm-reboot/state.json
status=/var/lib/nr-vm-suite.status
echo "nr-vm-suite: guest userspace up at $(cut -d' ' -f1 /proc/uptime)s (profile $PROFILE, $(systemctl --version | head -n 1), $(uname -r))"
sysstate=$(systemctl is-system-running --wait)
echo "nr-vm-suite: system $sysstate at $(cut -d' ' -f1 /proc/uptime)s"
[ "$sysstate" = running ] || systemctl --failed --no-pager

after_reboot=
if [ -e "$state" ]; then
	after_reboot=1
	TESTS='^TestVMReboot$'
	echo "nr-vm-suite: after the reboot: running $TESTS"
fi

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
if [ -z "$after_reboot" ] && [ -e "$state" ]; then
	echo "$rc" >"$status"
	echo "nr-vm-suite: reboot (a reset in the middle of a job; status so far $rc)"
	sync
	echo b >/proc/sysrq-trigger
	sleep 600
fi
if [ -n "$after_reboot" ]; then
	before=$(cat "$status" 2>/dev/null || echo 3)
	[ "$before" -gt "$rc" ] && rc=$before
fi
echo "nr-vm-suite: exit $rc"
sync
systemctl poweroff --no-block
