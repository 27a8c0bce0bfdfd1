# nspawn-runner. Tests that need root, loop devices, btrfs, systemd-nspawn,
# debootstrap or ansible skip outside CI when those are missing; run them as
# root to run everything.

GO       ?= go
PREFIX   ?= /usr/local
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN      ?= bin/nspawn-runner
# The run stage's own executable (cmd/nspawn-runner-stage), built next to
# BIN; installed in PREFIX/lib/nspawn-runner, where nspawn-runner finds it.
STAGE_BIN ?= $(dir $(BIN))nspawn-runner-stage
# A static binary: cgo is needed only for containerd/btrfs's C headers, so
# linking libc statically (with the pure-Go user and DNS lookups) is safe
# and saves the dynamic loader's work on every stage (see Performance).
TAGS     := netgo,osusergo
# EXTRA_TAGS=stagetrace: the stage breakdown's marks (internal/stagetrace).
EXTRA_TAGS ?=
LDFLAGS  := -X main.version=$(VERSION) -linkmode external -extldflags -static

.PHONY: build test test-host vm-test bench install demo deb vet fmt clean

build:
	CGO_ENABLED=1 $(GO) build -trimpath -tags '$(TAGS),$(EXTRA_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nspawn-runner
	# Standard library and x/sys only: no cgo, static by nature.
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(TAGS),$(EXTRA_TAGS)' -o $(STAGE_BIN) ./cmd/nspawn-runner-stage

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: the files above need formatting'; exit 1; }

# The test command of the README and of CI: every test. The host suite
# runs while the VM disks build (debootstrap waits for the mirror as much
# as for the CPU), then the guest suites of vm-test (each profile's CI
# subset, CI_TESTS: the whole suites take about an hour under emulation);
# it fails when either does, and runs both either way.
test: vet
	@log=$$(mktemp /tmp/nspawn-runner-vm-disks-XXXXXX.log); \
	VM_BUILD_ONLY=1 ./scripts/vm-test.sh >"$$log" 2>&1 & disks=$$!; \
	rc=0; $(GO) test -count=1 -timeout 75m ./... || rc=1; \
	if ! wait $$disks; then cat "$$log"; echo "make test: building the VM disks failed (above)"; rm -f "$$log"; exit 1; fi; \
	rm -f "$$log"; \
	VM_SUITE=ci VM_TIMEOUT=35m ./scripts/vm-test.sh || rc=1; \
	exit $$rc

# The host suite alone (go test), for a machine without qemu.
test-host: vet
	$(GO) test -count=1 -timeout 75m ./...

# As root: boot Debian VMs (systemd as PID 1, cgroup v2) in qemu and run the
# guest tests there; PROFILES=bookworm limits it to some profiles.
vm-test:
	./scripts/vm-test.sh $(PROFILES)

# Ratios against the raw floor, measured in one run.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 20x -timeout 60m ./...
	# 64 boot-mode jobs at once, once: how many succeed and how long it takes.
	NSPAWN_RUNNER_BENCH_CONCURRENT=64 $(GO) test -run '^$$' -bench '^BenchmarkConcurrent$$' -benchtime 1x -timeout 30m ./integration/

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/nspawn-runner
	install -D -m 0755 $(STAGE_BIN) $(DESTDIR)$(PREFIX)/lib/nspawn-runner/nspawn-runner-stage
	# systemd units (enable the timers yourself) and, for hosts without
	# systemd, the cron file; example playbooks. The units name the binary
	# where this install put it.
	install -d $(DESTDIR)/etc/systemd/system $(DESTDIR)/usr/share/doc/nspawn-runner/examples
	for f in dist/*.service dist/*.timer; do \
		sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' $$f > $(DESTDIR)/etc/systemd/system/$$(basename $$f) && \
		chmod 0644 $(DESTDIR)/etc/systemd/system/$$(basename $$f) || exit 1; \
	done
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' dist/nspawn-runner.cron > $(DESTDIR)/usr/share/doc/nspawn-runner/examples/nspawn-runner.cron
	install -m 0644 examples/*.yaml $(DESTDIR)/usr/share/doc/nspawn-runner/examples/

# The Debian package, in DEB_OUT (default bin/): see scripts/deb.sh.
DEB_OUT ?= bin
deb:
	./scripts/deb.sh $(DEB_OUT)

# From a fresh Debian 12 machine to a real CI job, end to end.
demo:
	./scripts/demo.sh

clean:
	rm -rf bin
