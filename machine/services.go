package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// A job's services are machines of their own (storage, cgroup, record,
// lock) named after the job's machine (ServiceName), that join the job
// machine's network namespace: a service listening on a port of its
// loopback is reachable from the job (and from the other services) on
// 127.0.0.1, and through the aliases that every machine of the job has in
// its /etc/hosts. What isolates the job's machine from other jobs and the
// host isolates its services too, with no address, veth or rule of their
// own. Two services on the same port collide, as with GitLab's Kubernetes
// executor, which shares a pod's network the same way.

// MaxServices bounds the services of one job.
const MaxServices = 16

// Service is one service of a job.
type Service struct {
	// Name is the service's name in the job (postgres:16).
	Name string
	// Image is the image it runs.
	Image string
	// Ports are the TCP ports that must accept connections before the
	// service is ready (the image's nspawn_runner_service_ports).
	Ports []int
	// Aliases are its host names in the job's machines.
	Aliases []string
	// Command, when not empty, runs as the machine's main process (fast
	// mode) with the job's variables in its environment; else the image
	// boots and its systemd starts the service.
	Command []string
}

// ServiceName is the machine name of the i-th (from 1) service of job.
func ServiceName(job string, i int) (string, error) {
	n := job + "-s" + strconv.Itoa(i)
	if err := nspawn.CheckMachineName(n); err != nil {
		return "", fmt.Errorf("service machine name: %w", err)
	}
	return n, nil
}

// isServiceOf reports whether name is a service machine of job: job, "-s"
// and 1 or 2 digits, nothing else (a job's own name ends in 12 hex digits
// of its key, so no job machine is mistaken for another job's service).
func isServiceOf(job, name string) bool {
	rest, ok := strings.CutPrefix(name, job+"-s")
	if !ok || rest == "" || len(rest) > 2 || rest[0] == '0' {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return false
		}
	}
	return true
}

// servicesOf lists the service machines of job that have anything on disk.
func (m *Manager) servicesOf(job string) ([]string, error) {
	names, err := m.names()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if isServiceOf(job, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// destroyServices stops and removes every service machine of job, at
// once; nothing to remove is fine.
func (m *Manager) destroyServices(ctx context.Context, job string) error {
	names, err := m.servicesOf(job)
	if err != nil || len(names) == 0 {
		return err
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.CleanupName(ctx, n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// hostsFile is the /etc/hosts of a job's machines: every alias of every
// service is 127.0.0.1, the loopback they all share.
func hostsFile(services []Service) string {
	var b strings.Builder
	b.WriteString("# written by nspawn-runner: the job's services are on this machine's loopback\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, s := range services {
		var names []string
		for _, a := range s.Aliases {
			// The aliases were checked (gitlab.CheckAlias); anything that
			// could break the file's syntax is left out all the same.
			if a != "" && !strings.ContainsAny(a, " \t\r\n#") {
				names = append(names, a)
			}
		}
		if len(names) > 0 {
			fmt.Fprintf(&b, "127.0.0.1\t%s\n", strings.Join(names, " "))
		}
	}
	return b.String()
}

// ServiceEnvPath is where a service's command finds the job's variables
// (a read-only bind of RUN_DIR/machines/NAME/service.env).
const ServiceEnvPath = "/run/nspawn-runner-service.env"

// writeServiceEnv writes the job's variables for a service's command as
// shell assignments into the machine's run directory (0700, on the run
// dir's tmpfs), never on a command line that /proc shows to everyone.
// The file is the machine root's alone, except with private users: the
// machine's root is then a uid that is not known before the machine
// starts, and the command reads the file at once, so it is readable by
// every user of the service machine (which runs nothing but the service).
func writeServiceEnv(l Layout, env []string, privateUsers bool) error {
	var b strings.Builder
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !shellName(k) {
			continue
		}
		b.WriteString(k + "=" + shellQuote(v) + "\n")
	}
	mode := os.FileMode(0o600)
	if privateUsers {
		mode = 0o644
	}
	if err := os.WriteFile(l.ServiceEnv, []byte(b.String()), mode); err != nil {
		return fmt.Errorf("write %s: %w", l.ServiceEnv, err)
	}
	// WriteFile keeps the mode of a file that exists (a retried start).
	return os.Chmod(l.ServiceEnv, mode)
}

// serviceCommand runs command with the variables of ServiceEnvPath
// exported.
func serviceCommand(command []string) []string {
	return append([]string{"/bin/sh", "-c", `set -a; . ` + ServiceEnvPath + `; set +a; exec "$@"`, "sh"}, command...)
}

func shellName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// serviceStart is the start of a job's services, running beside the
// job's own machine.
type serviceStart struct {
	m         *Manager
	out       io.Writer
	wg        sync.WaitGroup
	mu        sync.Mutex
	locks     []*machineLock
	notes     []string
	cancel    context.CancelFunc
	stopDebug func()
}

// startServices starts the services of req in parallel, in the network
// namespace netns (the host's when empty). Each service holds its lock
// until release: gc leaves a job's services alone while its prepare runs.
func (m *Manager) startServices(ctx context.Context, req PrepareRequest, job, netnsPath, resolv, hosts string) *serviceStart {
	out := req.JobLog
	if out == nil {
		out = io.Discard
	}
	sctx, cancel := context.WithTimeout(ctx, m.Config.ServicesTimeout.D())
	s := &serviceStart{m: m, out: out, cancel: cancel}
	var logs []serviceLog
	for i, svc := range req.Services {
		name, err := ServiceName(job, i+1)
		if err != nil {
			s.warn(svc, "", err.Error(), "")
			continue
		}
		l := m.layout(name)
		lk, err := m.lockMachine(ctx, l, true)
		if err != nil {
			s.warn(svc, name, err.Error(), "")
			continue
		}
		s.locks = append(s.locks, lk)
		logs = append(logs, serviceLog{name: svc.Name, path: l.Log, offset: l.DebugOffset})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.start(ctx, sctx, req, svc, l, job, netnsPath, resolv, hosts)
		}()
	}
	if req.DebugServices {
		s.stopDebug = streamLogs(out, logs)
	}
	return s
}

// start starts one service and waits until it is ready; failures are
// warnings for the job log, and a service that did not start is removed.
func (s *serviceStart) start(ctx, sctx context.Context, req PrepareRequest, svc Service, l Layout, job, netnsPath, resolv, hosts string) {
	m := s.m
	mode := config.ModeBoot
	if len(svc.Command) > 0 {
		mode = config.ModeFast
	}
	imagePath, err := m.Images.Path(svc.Image)
	if err != nil {
		s.warn(svc, l.Name, err.Error(), "")
		return
	}
	o := startOpts{
		req: PrepareRequest{JobID: req.JobID, Key: req.Key, Image: svc.Image},
		l:   l, mode: mode, imagePath: imagePath,
		job: job, service: svc.Name, aliases: svc.Aliases,
		netns: netnsPath, resolv: resolv, hosts: hosts,
		command: svc.Command, env: req.ServiceEnv, ready: sctx,
	}
	start := time.Now()
	if err := m.prepare(ctx, o); err != nil {
		dctx, cancel := m.destroyContext(ctx)
		if derr := m.destroy(dctx, l); derr != nil {
			m.log().Error("removing a service that did not start", "machine", l.Name, "err", derr)
		}
		cancel()
		s.warn(svc, l.Name, "it did not start, and was removed: "+err.Error(), "")
		return
	}
	for _, p := range svc.Ports {
		if err := waitPort(sctx, netnsPath, p); err != nil {
			s.warn(svc, l.Name, fmt.Sprintf("port %d did not accept a connection within %s (%v)", p, m.Config.ServicesTimeout.D(), err), l.Log)
			return
		}
	}
	m.log().Info("service ready", "machine", l.Name, "service", svc.Name, "image", svc.Image, "ports", svc.Ports, "took", time.Since(start).Round(time.Millisecond))
}

// wait waits until every service is ready or given up on.
func (s *serviceStart) wait() {
	s.wg.Wait()
	s.cancel()
	if s.stopDebug != nil {
		s.stopDebug()
		s.stopDebug = nil
	}
}

// abandon drops the warnings (the job failed anyway).
func (s *serviceStart) abandon() {
	s.mu.Lock()
	s.notes = nil
	s.mu.Unlock()
}

// release releases the services' locks.
func (s *serviceStart) release() {
	for _, lk := range s.locks {
		lk.release(false)
	}
	s.locks = nil
}

// report writes the warnings to the job log.
func (s *serviceStart) report() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.notes {
		io.WriteString(s.out, n)
	}
	s.notes = nil
}

// logTailBytes is how much of a service's log a warning quotes.
const logTailBytes = 2000

// warn records a warning about svc for the job log, in the docker
// executor's words, with the tail of logPath when given.
func (s *serviceStart) warn(svc Service, machineName, why, logPath string) {
	var b strings.Builder
	fmt.Fprintf(&b, "*** WARNING: Service %s (machine %s) probably didn't start properly.\n\n%s\n", svc.Name, machineName, why)
	if logPath != "" {
		if data, err := os.ReadFile(logPath); err == nil && len(data) > 0 {
			fmt.Fprintf(&b, "\nService log (the end of %s):\n%s\n", logPath, bytes.TrimSpace(nspawn.Tail(data, logTailBytes)))
		}
	}
	b.WriteString("\n*********\n\n")
	s.m.log().Warn("service not ready", "machine", machineName, "service", svc.Name, "why", why)
	s.mu.Lock()
	s.notes = append(s.notes, b.String())
	s.mu.Unlock()
}

// portPoll is how often a service's port is tried.
const portPoll = 100 * time.Millisecond

// waitPort waits until 127.0.0.1:port in the network namespace pinned at
// nsPath (the host's when empty) accepts a TCP connection.
func waitPort(ctx context.Context, nsPath string, port int) error {
	var ns *os.File
	if nsPath != "" {
		f, err := netns.Open(nsPath)
		if err != nil {
			return err
		}
		defer f.Close()
		ns = f
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	dial := func() error {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	t := time.NewTicker(portPoll)
	defer t.Stop()
	var last error
	for {
		if ns != nil {
			// The socket is made on a thread inside the namespace and
			// stays there.
			last = netns.Do(ns, dial)
		} else {
			last = dial()
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return last
		case <-t.C:
		}
	}
}

// serviceLog is a service's log to stream: from the offset kept in the
// file offset (where the previous stage stopped), which is updated at
// the end.
type serviceLog struct {
	name, path, offset string
}

// streamServiceLogs streams the logs of job's services to out while a
// stage runs (CI_DEBUG_SERVICES); call stop when it ends.
func (m *Manager) streamServiceLogs(job string, out io.Writer) (stop func()) {
	names, err := m.servicesOf(job)
	if err != nil {
		m.log().Warn("listing the job's services", "err", err)
	}
	var logs []serviceLog
	for _, n := range names {
		l := m.layout(n)
		rec, err := readRecord(l.Record)
		if err != nil {
			continue
		}
		logs = append(logs, serviceLog{name: rec.Service, path: l.Log, offset: l.DebugOffset})
	}
	return streamLogs(out, logs)
}

// streamLogs copies what the services write to their logs to out, each
// line prefixed with the service's name, until the returned stop is
// called (CI_DEBUG_SERVICES).
func streamLogs(out io.Writer, logs []serviceLog) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, sl := range logs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var from int64
			if b, err := os.ReadFile(sl.offset); err == nil {
				from, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			}
			end := followLog(ctx, sl.path, from, func(line []byte) {
				mu.Lock()
				fmt.Fprintf(out, "[service %s] %s\n", sl.name, line)
				mu.Unlock()
			})
			// The run dir is gone when the service was removed.
			_ = os.WriteFile(sl.offset, []byte(strconv.FormatInt(end, 10)+"\n"), 0o600)
		}()
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// followLog calls line for every complete line written to path from
// offset from on until ctx ends, then once more for what is left (the
// file may not exist yet). It returns the offset it read to.
func followLog(ctx context.Context, path string, from int64, line func([]byte)) int64 {
	var f *os.File
	var pending []byte
	pos := from
	buf := make([]byte, 32<<10)
	t := time.NewTicker(limitPoll)
	defer t.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-t.C:
		}
		if f == nil {
			var err error
			if f, err = os.Open(path); err != nil {
				continue
			}
			defer f.Close()
			if _, err := f.Seek(from, io.SeekStart); err != nil {
				return from
			}
		}
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			pos += int64(n)
			if n == 0 || err != nil {
				break
			}
		}
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				break
			}
			line(bytes.TrimRight(pending[:i], "\r"))
			pending = pending[i+1:]
		}
	}
	if len(pending) > 0 {
		line(pending)
	}
	return pos
}
