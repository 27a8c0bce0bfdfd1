#!/bin/bash
# Build the Debian package of nspawn-runner with dpkg-deb (make deb).
#
#   scripts/deb.sh OUTDIR
#
# The package: /usr/bin/nspawn-runner (static), the run stage's own
# executable /usr/lib/nspawn-runner/nspawn-runner-stage (gitlab-runner runs
# it, not users: off PATH, where Debian puts a package's internal
# programs; nspawn-runner toml names it as run_exec), the systemd units and timers
# of dist/ (not enabled), the commented default config /etc/nspawn-runner.yaml
# (a conffile), the kernel limits drop-in /usr/lib/sysctl.d/60-nspawn-runner.conf
# (applied at install, never lowering a limit), a man page generated from the
# CLI's help, and the cron example and example playbooks under
# /usr/share/doc/nspawn-runner/examples.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/deb.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Debian versions start with a digit: 0~git<commit time>.<hash> sorts by
# commit time (and before any release 0.x).
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
when=$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
version=${DEB_VERSION:-0~git$when.$rev}
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/nspawn-runner" "$pkg/lib/systemd/system" "$pkg/etc" \
	"$pkg/usr/lib/sysctl.d" "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/nspawn-runner/examples"

make -s build BIN="$pkg/usr/bin/nspawn-runner" STAGE_BIN="$pkg/usr/lib/nspawn-runner/nspawn-runner-stage" VERSION="$version"
bin=$pkg/usr/bin/nspawn-runner
stagebin=$pkg/usr/lib/nspawn-runner/nspawn-runner-stage
chmod 0755 "$bin" "$stagebin"

for f in dist/*.service dist/*.timer; do
	sed 's|/usr/local/bin/|/usr/bin/|g' "$f" > "$pkg/lib/systemd/system/$(basename "$f")"
done
sed 's|/usr/local/bin/|/usr/bin/|g' dist/nspawn-runner.cron > "$pkg/usr/share/doc/nspawn-runner/examples/nspawn-runner.cron"
install -m 0644 examples/*.yaml "$pkg/usr/share/doc/nspawn-runner/examples/"
install -m 0644 dist/nspawn-runner.yaml "$pkg/etc/nspawn-runner.yaml"
"$bin" --config /dev/null setup --print-sysctl > "$pkg/usr/lib/sysctl.d/60-nspawn-runner.conf"
"$bin" --help-man | gzip -9n > "$pkg/usr/share/man/man1/nspawn-runner.1.gz"
install -m 0644 README.md "$pkg/usr/share/doc/nspawn-runner/README.md"
gzip -9n "$pkg/usr/share/doc/nspawn-runner/README.md"
cat > "$pkg/usr/share/doc/nspawn-runner/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nspawn-runner

Files: *
Copyright: the nspawn-runner authors
License: GPL-3.0-or-later
 On Debian systems, the full text of the GNU General Public License
 version 3 can be found in /usr/share/common-licenses/GPL-3.
COPYRIGHT
find "$pkg" -type d -exec chmod 0755 {} +
find "$pkg" -type f ! -path "$bin" ! -path "$stagebin" -exec chmod 0644 {} +

echo /etc/nspawn-runner.yaml > "$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: nspawn-runner
Version: $version
Architecture: $arch
Maintainer: nspawn-runner maintainers <nspawn-runner@localhost>
Installed-Size: $size
Depends: systemd-container, debootstrap
Recommends: btrfs-progs, eatmydata, ansible
Suggests: gitlab-runner
Section: admin
Priority: optional
Description: GitLab Runner custom executor running each job in a systemd-nspawn machine
 nspawn-runner runs every CI job of a GitLab Runner in its own throwaway
 systemd-nspawn machine, started from a btrfs snapshot or an overlay of a
 debootstrapped base image, and builds and maintains those images (with
 optional Ansible playbooks). One static binary: no daemon, no D-Bus.
 .
 After installing: nspawn-runner setup, nspawn-runner chroot-create bookworm,
 nspawn-runner toml bookworm (the [[runners]] section for gitlab-runner),
 nspawn-runner doctor.
CONTROL

cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
	# Raise the kernel limits many machines need now (setup never lowers
	# one); at boot systemd-sysctl applies the same file.
	nspawn-runner --config /dev/null setup --sysctl-only --sysctl-file /usr/lib/sysctl.d/60-nspawn-runner.conf >/dev/null ||
		echo "nspawn-runner: could not raise the kernel limits now; they apply at the next boot" >&2
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || true
	fi
fi
exit 0
POSTINST
cat > "$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
	# The drop-in nspawn-runner setup installs; images, caches and
	# /etc/nspawn-runner playbooks are the admin's data and stay.
	rm -f /etc/sysctl.d/60-nspawn-runner.conf
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"

deb=$out/nspawn-runner_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
