#!/bin/bash
# build-disk.sh SUITE FS PACKAGES OUT: debootstrap a Debian VM root
# filesystem (systemd as PID 1) and write OUT/root.img (an ext4 or btrfs
# image made from the tree, no loop device needed), OUT/vmlinuz and
# OUT/initrd.img (a small initrd: virtio, ext4, btrfs). The guest runs
# /usr/local/sbin/nr-vm-boot at boot, which mounts the 9p share "inputs"
# and runs its guest.sh: everything that changes between runs comes from
# there, so this disk only depends on this file, the suite, FS and PACKAGES
# (vm-test.sh caches it under a hash of the three).
set -euo pipefail
suite=${1:?suite} fs=${2:?ext4 or btrfs} packages=${3:?packages} out=${4:?output dir}
size=${VM_DISK_SIZE:-12G}

tree=$(mktemp -d "${out}.tree-XXXXXX")
cleanup() {
	for m in dev/pts dev proc sys; do umount "$tree/$m" 2>/dev/null || true; done
	rm -rf --one-file-system "$tree"
}
trap cleanup EXIT

# A small initrd with only what the root device needs, set before
# debootstrap so that the kernel's own postinst builds it (files dpkg does
# not own stay as they are).
mkdir -p "$tree/etc/initramfs-tools/conf.d" "$tree/usr/share/initramfs-tools/modules.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' >"$tree/etc/initramfs-tools/conf.d/nr-vm"
printf '%s\n' virtio_pci virtio_blk ext4 btrfs >"$tree/usr/share/initramfs-tools/modules.d/nr-vm"

echo "vm-test: debootstrap $suite with $packages (a few minutes, once per package list)" >&2
emd=()
command -v eatmydata >/dev/null && emd=(eatmydata)
"${emd[@]}" debootstrap --variant=minbase --include="$packages" "$suite" "$tree" >"$out/debootstrap.log" 2>&1 || {
	tail -n 30 "$out/debootstrap.log" >&2
	echo "vm-test: debootstrap of the VM disk failed (log: $out/debootstrap.log)" >&2
	exit 1
}

echo nrvm >"$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 nrvm\n' >"$tree/etc/hosts"
# A fixed machine id: every boot of the throwaway copy is not a first boot.
printf '%s\n' 4e5350524e564d00000000000000a001 >"$tree/etc/machine-id"
printf '/dev/vda / %s rw 0 1\n' "$fs" >"$tree/etc/fstab"
: >"$tree/etc/resolv.conf"
# Nothing in the guest may wait for a network that does not exist, or for
# timers that fire in the middle of a test.
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
	e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer systemd-timesyncd.service; do
	ln -sf /dev/null "$tree/etc/systemd/system/$u"
done

install -m 0755 /dev/stdin "$tree/usr/local/sbin/nr-vm-boot" <<'BOOT'
#!/bin/bash
# Mounts the host's inputs (9p tag "inputs") and runs their guest.sh.
set -u
mkdir -p /mnt/inputs
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro inputs /mnt/inputs; then
	echo "nr-vm-boot: cannot mount the 9p share inputs" >/dev/ttyS1
	echo "nr-vm-suite: exit 3" >/dev/ttyS1
	systemctl poweroff
	exit 1
fi
exec /mnt/inputs/guest.sh
BOOT
cat >"$tree/etc/systemd/system/nr-vm-suite.service" <<'UNIT'
[Unit]
Description=nspawn-runner VM suite (inputs from the host's 9p share)
DefaultDependencies=no
After=local-fs.target
Wants=local-fs.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/nr-vm-boot
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/nr-vm-suite.service "$tree/etc/systemd/system/multi-user.target.wants/nr-vm-suite.service"

cp -L "$tree/vmlinuz" "$out/vmlinuz"
cp -L "$tree/initrd.img" "$out/initrd.img"
rm -f "$tree"/var/cache/apt/archives/*.deb

rm -f "$out/root.img"
truncate -s "$size" "$out/root.img"
case $fs in
ext4) mkfs.ext4 -q -F -L nrvm -d "$tree" "$out/root.img" ;;
btrfs) mkfs.btrfs -q -L nrvm --rootdir "$tree" "$out/root.img" ;;
*) echo "vm-test: unknown root filesystem $fs" >&2; exit 1 ;;
esac
