#!/bin/bash
# vm-test.sh [PROFILE...]: boot a Debian VM per profile (scripts/vm/profiles/
# NAME.conf; default: all of them) with qemu, systemd as PID 1 and unified
# cgroup v2, run the guest tests (integration/vm_guest_test.go) inside it and
# exit with their status. Needs root, qemu-system-x86, qemu-utils,
# debootstrap and Go; no hardware virtualisation (software emulation unless
# KVM really works). See README, "Integration-test harnesses in VMs".
#
# Environment: VM_CACHE (default $NSPAWN_RUNNER_TEST_CACHE or
# /var/cache/nspawn-runner-test) holds the VM disks (vm-*) and the job image;
# VM_TIMEOUT (default 90m, all boots of a profile together) kills a guest
# that runs longer; VM_ACCEL (tcg or kvm) overrides the detection; VM_MEM
# (MiB, default 4096); VM_SMP (default the host's cores); VM_KEEP=1 keeps
# the work directory; VM_TESTS overrides the profile's test selection (go
# test -run); VM_SUITE=ci runs each profile's CI_TESTS (the subset make test
# and CI run) instead of its TESTS; VM_BUILD_ONLY=1 only builds the disks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
here=$PWD
cache=${VM_CACHE:-${NSPAWN_RUNNER_TEST_CACHE:-/var/cache/nspawn-runner-test}}
timeout=${VM_TIMEOUT:-90m}
log() { echo "vm-test: $*" >&2; }
die() { log "$*"; exit 1; }

case ${VM_SUITE:-full} in
full | ci) ;;
*) die "VM_SUITE must be full or ci, not $VM_SUITE" ;;
esac
case $timeout in
*m) timeout_s=$((${timeout%m} * 60)) ;;
*s) timeout_s=${timeout%s} ;;
*[0-9]) timeout_s=$timeout ;;
*) die "VM_TIMEOUT must be like 90m or 5400s, not $timeout" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mkfs, the guest disk)"
for b in qemu-system-x86_64 qemu-img debootstrap mkfs.ext4 mkfs.btrfs go flock; do
	command -v "$b" >/dev/null || die "$b is missing: apt-get install qemu-system-x86 qemu-utils debootstrap btrfs-progs (Go 1.26 in /usr/local/go)"
done

profiles=("$@")
if [ ${#profiles[@]} = 0 ]; then
	for f in scripts/vm/profiles/*.conf; do profiles+=("$(basename "$f" .conf)"); done
fi
for p in "${profiles[@]}"; do
	[ -f "scripts/vm/profiles/$p.conf" ] || die "no profile $p (scripts/vm/profiles/$p.conf)"
done

# Packages every VM has: systemd as PID 1 with udev, D-Bus (so machined
# and systemd-nspawn's registration work), the kernel and a small initrd,
# what the product runs (systemd-nspawn, btrfs), and debootstrap, which the
# test image's code path looks for.
common=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,systemd-container,btrfs-progs,iproute2,kmod,procps,debootstrap

accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
	# /dev/kvm alone proves nothing (a paravirtual one cannot run a Debian
	# kernel): only hardware virtualisation flags make KVM worth it.
	if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; else accel=tcg; fi
fi
case $accel in
kvm) accel_args=(-accel kvm -cpu host) ;;
tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
*) die "VM_ACCEL must be kvm or tcg, not $accel" ;;
esac

mkdir -p "$cache"
work=$(mktemp -d /var/tmp/nr-vm-XXXXXX)
qpid=
finish() {
	[ -n "$qpid" ] && kill -KILL "$qpid" 2>/dev/null || true
	if [ "${VM_KEEP:-}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap finish EXIT

# The guest needs no Go and no network: the host builds the binaries.
t0=$SECONDS
make -s build BIN="$work/nspawn-runner"
go test -c -o "$work/integration.test" ./integration
log "built nspawn-runner and the integration test binary in $((SECONDS - t0))s"

# The cached job image (the same one the host tests use), built here when
# missing, then copied once into an ext4 disk image the guest mounts
# read-only at the same place in its own cache directory.
t0=$SECONDS
CI=true NSPAWN_RUNNER_TEST_CACHE=$cache NSPAWN_RUNNER_VM_IMAGE_OUT=$work/image-path \
	"$work/integration.test" -test.run '^TestVMImage$' -test.count=1 >"$work/image.log" 2>&1 ||
	{ cat "$work/image.log" >&2; die "could not build or find the cached job image"; }
imagedir=$(dirname "$(cat "$work/image-path")")
jobdisk=$cache/vm-job$(basename "$imagedir").img
(
	flock 9
	if [ ! -f "$jobdisk" ]; then
		mb=$(du -sm "$imagedir" | cut -f1)
		rm -f "$jobdisk.tmp"
		truncate -s "$((mb * 3 / 2 + 256))M" "$jobdisk.tmp"
		mkfs.ext4 -q -F -L nrjobimage -d "$imagedir" "$jobdisk.tmp"
		mv "$jobdisk.tmp" "$jobdisk"
	fi
) 9>"$jobdisk.lock"
log "job image $(basename "$imagedir") ready in $((SECONDS - t0))s"

# Every profile's disk first, built in parallel (debootstrap waits for the
# mirror as much as for the CPU); VM_BUILD_ONLY=1 stops there.
declare -A disks
builders=()
for p in "${profiles[@]}"; do
	SUITE= ROOTFS= EXTRA_PACKAGES= TESTS= CI_TESTS=
	. "scripts/vm/profiles/$p.conf"
	pkgs=$common${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}
	key=$( { printf '%s\n' "$SUITE" "$ROOTFS" "$pkgs"; cat scripts/vm/build-disk.sh; } | sha256sum | cut -c1-12)
	disk=$cache/vm-$SUITE-$ROOTFS-$key
	disks[$p]=$disk
	(
		t0=$SECONDS
		flock 9
		if [ ! -f "$disk/complete" ]; then
			rm -rf "$disk"
			mkdir -p "$disk"
			scripts/vm/build-disk.sh "$SUITE" "$ROOTFS" "$pkgs" "$disk"
			touch "$disk/complete"
			log "profile $p: built the VM disk $disk in $((SECONDS - t0))s"
		fi
		log "profile $p: VM disk ready in $((SECONDS - t0))s ($disk)"
	) 9>"$disk.lock" &
	builders+=($!)
done
for b in "${builders[@]}"; do
	wait "$b" || die "building a VM disk failed (see above)"
done
[ "${VM_BUILD_ONLY:-}" = 1 ] && exit 0

status=0
for p in "${profiles[@]}"; do
	SUITE= ROOTFS= EXTRA_PACKAGES= TESTS= CI_TESTS=
	. "scripts/vm/profiles/$p.conf"
	disk=${disks[$p]}
	[ "${VM_SUITE:-}" = ci ] && TESTS=${CI_TESTS:-$TESTS}

	run=$work/$p
	mkdir -p "$run/inputs"
	ln "$work/nspawn-runner" "$work/nspawn-runner-stage" "$work/integration.test" "$run/inputs/"
	cp scripts/vm/guest.sh "$run/inputs/"
	# go test's own timeout in the guest ends before VM_TIMEOUT kills it,
	# so a hung test shows its goroutines instead of a silent kill.
	printf 'PROFILE=%q\nTESTS=%q\nIMAGE_DIR=%q\nGUEST_TIMEOUT=%q\n' "$p" "${VM_TESTS:-$TESTS}" "$(basename "$imagedir")" \
		"$((timeout_s * 9 / 10))s" >"$run/inputs/env"
	# The cached disk stays untouched: the guest writes to a qcow2 layer.
	qemu-img create -q -f qcow2 -b "$disk/root.img" -F raw "$run/root.qcow2"
	# The guest may ask for a reboot (the reboot tests: it prints
	# "nr-vm-suite: reboot" and resets itself; -no-reboot makes qemu exit
	# then): boot the same qcow2 layer again, at most three times.
	deadline=$((SECONDS + timeout_s))
	boot=1 t0=$SECONDS rc= qrc=0
	while :; do
		console=$run/console-$boot.log suite=$run/suite-$boot.log
		: >"$console"
		: >"$suite"
		log "profile $p: boot $boot ($accel, $SUITE, root on $ROOTFS, tests ${VM_TESTS:-$TESTS}); guest output follows"
		left=$((deadline - SECONDS))
		[ "$left" -gt 0 ] || left=1
		timeout -s KILL "$left" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
			-machine q35 "${accel_args[@]}" -smp "${VM_SMP:-$(nproc)}" -m "${VM_MEM:-4096}" \
			-kernel "$disk/vmlinuz" -initrd "$disk/initrd.img" \
			-append "root=/dev/vda rw console=ttyS0 quiet mitigations=off panic=-1 systemd.unified_cgroup_hierarchy=1 systemd.show_status=false" \
			-drive "file=$run/root.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
			-drive "file=$jobdisk,if=virtio,format=raw,readonly=on" \
			-virtfs "local,path=$run/inputs,mount_tag=inputs,security_model=none,readonly=on" \
			-serial "file:$console" -serial "file:$suite" \
			</dev/null >"$run/qemu.log" 2>&1 &
		qpid=$!
		tail -n +1 -f --pid=$qpid "$suite" &
		tpid=$!
		qrc=0
		wait $qpid || qrc=$?
		qpid=
		wait $tpid || true
		rc=$(sed -n 's/^nr-vm-suite: exit \([0-9]*\).*/\1/p' "$suite" | tail -n 1)
		if [ -z "$rc" ] && [ "$qrc" = 0 ] && grep -q '^nr-vm-suite: reboot' "$suite" && [ "$boot" -lt 3 ]; then
			boot=$((boot + 1))
			continue
		fi
		break
	done
	took=$((SECONDS - t0))
	if [ -z "$rc" ]; then
		if [ "$qrc" = 137 ]; then why="killed after $timeout (VM_TIMEOUT)"; else why="qemu exited $qrc before the suite finished"; fi
		log "profile $p: FAIL: $why; qemu said:"
		tail -n 20 "$run/qemu.log" >&2
		log "profile $p: the console's last lines:"
		tail -n 60 "$console" >&2
		status=1
	elif [ "$rc" != 0 ]; then
		log "profile $p: FAIL: the guest suite exited $rc (VM ran ${took}s, $boot boot(s))"
		status=1
	else
		log "profile $p: ok (VM ran ${took}s, $boot boot(s))"
	fi
	if [ "$status" != 0 ] && [ "${VM_KEEP:-}" = 1 ]; then log "console logs: $run/console-*.log"; fi
done
exit $status
