//go:build cgo

// Entering a machine that has its own user namespace.
//
// setns(2) refuses CLONE_NEWUSER to a multithreaded process ("EINVAL: the
// caller is multithreaded and tried to join a new user namespace"), and a
// Go program has threads before main runs. So StartIn (userns_linux.go)
// starts this same binary again, already in the machine's pid namespace,
// with NSENTER_ENV set; this constructor runs before the Go runtime
// exists, while the process is still single-threaded, joins the user
// namespace and the others in one setns(2) with a pidfd (Linux 5.8),
// becomes root of that namespace and execs the command. The Go runtime of
// this process never starts.
//
// NSENTER_ENV is "PIDFD,ERRFD,FLAGS,DIR" (DIR last: it may hold commas);
// argv[1] is the program (looked up along the PATH of the environment when
// it has no '/'), argv[2] and on its argv. Any failure writes
// "ERRNO message" to ERRFD, which is close-on-exec: the parent reads
// end-of-file when the exec succeeded, as os/exec does for its own child.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NSENTER_ENV "_NSPAWN_RUNNER_NSENTER"

static int errfd = -1;

static void fail(int err, const char *what, const char *arg) {
	char buf[512];
	int n = snprintf(buf, sizeof buf, "%d %s %s: %s", err, what, arg, strerror(err));
	if (errfd >= 0 && n > 0) {
		ssize_t w = write(errfd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
		(void)w;
	}
	_exit(126);
}

static const char *envget(char **envp, const char *key) {
	size_t k = strlen(key);
	const char *found = NULL;
	for (char **e = envp; *e; e++) {
		if (strncmp(*e, key, k) == 0 && (*e)[k] == '=') {
			found = *e + k + 1;
		}
	}
	return found;
}

__attribute__((constructor)) static void nspawn_runner_nsenter(int argc, char **argv, char **envp) {
	const char *v = getenv(NSENTER_ENV);
	if (v == NULL) {
		return;
	}
	int pidfd, flags, off = 0;
	if (sscanf(v, "%d,%d,%i,%n", &pidfd, &errfd, &flags, &off) != 3 || off == 0) {
		fprintf(stderr, "nspawn-runner: malformed %s\n", NSENTER_ENV);
		_exit(126);
	}
	const char *dir = v + off;
	// Not dumpable until the exec: once in the machine's user namespace,
	// its root could otherwise ptrace us while we still hold the host's
	// root credentials (runc's nsexec does the same).
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
		fprintf(stderr, "nspawn-runner: prctl: %s\n", strerror(errno));
		_exit(126);
	}
	if (fcntl(errfd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, "nspawn-runner: status fd %d: %s\n", errfd, strerror(errno));
		_exit(126);
	}
	if (argc < 3) {
		fail(EINVAL, "usage", "no command");
	}
	// The command's environment is ours without NSENTER_ENV.
	int n = 0;
	while (envp[n]) {
		n++;
	}
	char **env = calloc((size_t)n + 1, sizeof *env);
	if (env == NULL) {
		fail(errno, "allocate", "environment");
	}
	size_t k = strlen(NSENTER_ENV);
	int j = 0;
	for (int i = 0; i < n; i++) {
		if (!(strncmp(envp[i], NSENTER_ENV, k) == 0 && envp[i][k] == '=')) {
			env[j++] = envp[i];
		}
	}
	env[j] = NULL;

	// The user namespace first (the kernel joins it before the others, so
	// our capabilities there cover them), all in one call.
	if (setns(pidfd, flags) < 0) {
		fail(errno, "setns", "machine leader");
	}
	close(pidfd);
	// Root of the machine's user namespace: its uid and gid 0, which are
	// the first of the machine's range on the host. Until now we were the
	// host's root, which that namespace shows as nobody.
	if (setgroups(0, NULL) < 0) {
		fail(errno, "setgroups", "[]");
	}
	if (setresgid(0, 0, 0) < 0) {
		fail(errno, "setresgid", "0");
	}
	if (setresuid(0, 0, 0) < 0) {
		fail(errno, "setresuid", "0");
	}
	if (chdir(dir) < 0) {
		fail(errno, "chdir", dir);
	}
	const char *prog = argv[1];
	char **args = argv + 2;
	if (strchr(prog, '/') != NULL) {
		execve(prog, args, env);
		fail(errno, "exec", prog);
	}
	// Look the program up along the command's PATH, inside the machine.
	const char *path = envget(env, "PATH");
	if (path == NULL) {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	}
	int last = ENOENT;
	char full[PATH_MAX];
	for (const char *p = path; *p;) {
		const char *end = strchrnul(p, ':');
		size_t len = (size_t)(end - p);
		if (len > 0 && p[0] == '/' && len + 1 + strlen(prog) < sizeof full) {
			memcpy(full, p, len);
			full[len] = '/';
			strcpy(full + len + 1, prog);
			execve(full, args, env);
			if (errno != ENOENT && errno != ENOTDIR) {
				last = errno;
			}
		}
		p = *end ? end + 1 : end;
	}
	fail(last, "exec", prog);
}
