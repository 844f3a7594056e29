/*
 * The C floor of bench/process.rb's spawn+wait workload: N times, create a
 * child that execs /bin/true and reap it, either
 *
 *   vfork   vfork(2) + execve(2), then waitpid(2) on the pid (what
 *           Process.spawn + Process.wait do underneath when not
 *           privileged), or
 *   pidfd   clone(2) with CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD on
 *           an mmap'ed stack + execve(2), then waitid(P_PIDFD) on the
 *           pidfd and close(2) (what Process::Handle.spawn + #wait do
 *           when not privileged),
 *
 * or, for reference, fork(2) + execve(2) + waitpid(2): CRuby forks instead
 * (and Process::Handle.spawn clones without CLONE_VM | CLONE_VFORK) when
 * it runs as root or set-id (has_privilege() in process.c).
 *
 * A few untimed spawns warm up first.  Prints, per mode, one line:
 *
 *   MODE N WALL_US CPU_SELF_US CPU_CHILDREN_US
 *
 * the wall-clock microseconds per spawn+wait, then the CPU (user + sys,
 * getrusage) of this process and of its reaped children per spawn+wait.
 *
 *   spawn_wait [vfork|pidfd|fork|both] [N]  (defaults: both = vfork and
 *                                           pidfd, 500)
 *
 * And the child that bench/process.rb waits for in its concurrent-wait
 * workload: reads a CLOCK_MONOTONIC deadline (int64 nanoseconds, native
 * byte order) from stdin, sleeps until then and exits 0 (1 on a short
 * read, so the children of a parent that died exit at once):
 *
 *   spawn_wait until
 *
 * Built by bench/process.rb: gcc -O2 bench/c/spawn_wait.c -o /tmp/spawn_wait
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
# define CLONE_PIDFD 0x00001000
#endif
#ifndef P_PIDFD
# define P_PIDFD 3
#endif

extern char **environ;

static char *const child_argv[] = {"true", NULL};
static const char *child_path = "/bin/true";

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
cpu(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void
die(const char *what)
{
    perror(what);
    exit(1);
}

static void
spawn_vfork(void)
{
    int status;
    pid_t pid = vfork();

    if (pid == 0) {
        execve(child_path, child_argv, environ);
        _exit(127);
    }
    if (pid < 0) die("vfork");
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) die("waitpid");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "spawn_wait: child failed (status %#x)\n", status);
        exit(1);
    }
}

static int
clone_child(void *arg)
{
    (void)arg;
    execve(child_path, child_argv, environ);
    _exit(127);
}

static void
spawn_fork(void)
{
    int status;
    pid_t pid = fork();

    if (pid == 0) {
        execve(child_path, child_argv, environ);
        _exit(127);
    }
    if (pid < 0) die("fork");
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) die("waitpid");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "spawn_wait: child failed (status %#x)\n", status);
        exit(1);
    }
}

static int
sleep_until_deadline(void)
{
    int64_t ns;
    size_t got = 0;
    struct timespec ts;

    while (got < sizeof(ns)) {
        ssize_t r = read(0, (char *)&ns + got, sizeof(ns) - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 1;
        got += (size_t)r;
    }
    ts.tv_sec = ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR);
    return 0;
}

static char *stack_top;

static void
spawn_pidfd(void)
{
    int pidfd = -1;
    siginfo_t si;
    /* CLONE_VFORK: we are suspended until the child has exec'ed, so the
     * one stack serves every child in turn. */
    pid_t pid = clone(clone_child, stack_top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, NULL, &pidfd);

    if (pid < 0) die("clone");
    if (pidfd < 0) {
        fprintf(stderr, "spawn_wait: no pidfd from clone (kernel before 5.2?)\n");
        exit(1);
    }
    memset(&si, 0, sizeof(si));
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0) {
        if (errno != EINTR) die("waitid(P_PIDFD)");
    }
    close(pidfd);
    if (si.si_code != CLD_EXITED || si.si_status != 0) {
        fprintf(stderr, "spawn_wait: child failed (code %d, status %d)\n", si.si_code, si.si_status);
        exit(1);
    }
}

static void
run(const char *mode, void (*spawn)(void), long n)
{
    double t0, s0, c0, t, s, c;
    long i;

    for (i = 0; i < 10; i++) spawn();
    t0 = now();
    s0 = cpu(RUSAGE_SELF);
    c0 = cpu(RUSAGE_CHILDREN);
    for (i = 0; i < n; i++) spawn();
    t = now() - t0;
    s = cpu(RUSAGE_SELF) - s0;
    c = cpu(RUSAGE_CHILDREN) - c0;
    printf("%s %ld %.2f %.2f %.2f\n", mode, n, t * 1e6 / n, s * 1e6 / n, c * 1e6 / n);
    fflush(stdout);
}

int
main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "both";
    long n = argc > 2 ? atol(argv[2]) : 500;
    const size_t size = 64 * 1024;
    char *stack;

    if (!strcmp(mode, "until")) return sleep_until_deadline();
    if (n <= 0) {
        fprintf(stderr, "usage: spawn_wait [vfork|pidfd|fork|both] [N] | until\n");
        return 2;
    }
    stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) die("mmap");
    stack_top = stack + size;  /* the stack grows down on every Linux target we care about */

    if (!strcmp(mode, "vfork") || !strcmp(mode, "both")) run("vfork", spawn_vfork, n);
    if (!strcmp(mode, "pidfd") || !strcmp(mode, "both")) run("pidfd", spawn_pidfd, n);
    if (!strcmp(mode, "fork")) run("fork", spawn_fork, n);
    if (strcmp(mode, "vfork") && strcmp(mode, "pidfd") && strcmp(mode, "fork") && strcmp(mode, "both")) {
        fprintf(stderr, "usage: spawn_wait [vfork|pidfd|fork|both] [N] | until\n");
        return 2;
    }
    return 0;
}
