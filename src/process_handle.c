/**********************************************************************

  process_handle.c - Process::Handle: a child process held by a pidfd

  A pid names a process only until it is reaped: afterwards kill(2) and
  waitpid(2) on it reach whatever process the kernel gave the number to
  next.  A pidfd (Linux 5.3) names one process for as long as it is open.
  Process::Handle keeps one, obtained when the child is created (clone(2)
  with CLONE_PIDFD for spawn, a handshake for fork), signals through it,
  reaps exactly once through it with waitid(P_PIDFD) and caches the
  status, which every waiter receives.  Its descriptor is an IO, readable
  once the process has exited, so waits go through IO#wait_readable and
  therefore through any fiber scheduler's #io_wait.

  Without pidfds (other systems, kernels before 5.3, seccomp filters that
  refuse them, RUBY_PROCESS_HANDLE_PIDFD=0) the same class works on the
  pid and is not race-free: Process::Handle.race_free? says which.

  The scheduler hook #process_open lets a scheduler adopt the handles its
  fibers create, and then receive them in #process_wait.

**********************************************************************/

#include "ruby/internal/config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_SYS_WAIT_H
# include <sys/wait.h>
#endif

#if defined(__linux__)
# include <poll.h>
# include <sched.h>
# include <sys/ioctl.h>
# include <sys/mman.h>
# include <sys/syscall.h>
# if defined(SYS_pidfd_open) && defined(SYS_pidfd_send_signal) && defined(CLONE_PIDFD) && defined(WEXITED)
#  define USE_PIDFD 1
# endif
#endif
#ifndef USE_PIDFD
# define USE_PIDFD 0
#endif
#ifndef HAVE_KILLPG
# define killpg(pg, sig) kill(-(pg), (sig))
#endif

#include "vm_core.h"
#include "ruby/fiber/scheduler.h"
#include "ruby/io.h"
#include "ruby/thread.h"
#include "internal/process_handle.h"
#include "internal/scheduler_hooks.h"

VALUE rb_cProcessHandle;

static ID id_fork, id_pid;
static VALUE detached;  /* Array of detached handles not reaped yet */

/* Do we use pidfds?  Decided once, at boot. */
static int pidfd_enabled;

struct process_handle {
    VALUE io;         /* IO owning the pidfd; Qnil without one */
    VALUE status;     /* the Process::Status once reaped, else Qnil */
    VALUE adopter;    /* the scheduler whose #process_open adopted it */
    rb_pid_t pid;
    rb_pid_t owner;   /* getpid() of the process that created the handle */
    int error;        /* errno when the status is lost (ECHILD) */
    unsigned race_free : 1;
    unsigned detached : 1;
    unsigned orphan : 1;      /* detached by core: close once reaped */
    unsigned closed : 1;      /* #close without a pidfd */
    unsigned waiter : 1;      /* detached, a thread waits for it */
    int blocked;              /* threads in a blocking waitpid (no pidfd) */
};

static void
handle_mark(void *ptr)
{
    struct process_handle *h = ptr;

    rb_gc_mark_movable(h->io);
    rb_gc_mark_movable(h->status);
    rb_gc_mark_movable(h->adopter);
}

static void
handle_compact(void *ptr)
{
    struct process_handle *h = ptr;

    h->io = rb_gc_location(h->io);
    h->status = rb_gc_location(h->status);
    h->adopter = rb_gc_location(h->adopter);
}

static const rb_data_type_t handle_type = {
    "Process::Handle",
    {handle_mark, RUBY_TYPED_DEFAULT_FREE, NULL, handle_compact},
    0, 0, RUBY_TYPED_FREE_IMMEDIATELY | RUBY_TYPED_WB_PROTECTED
};

static struct process_handle *
handle_get(VALUE self)
{
    return rb_check_typeddata(self, &handle_type);
}

int
rb_process_handle_p(VALUE obj)
{
    return rb_typeddata_is_kind_of(obj, &handle_type);
}

/* --- pidfd system calls ---------------------------------------------- */

#if USE_PIDFD
# ifndef PIDFD_SIGNAL_PROCESS_GROUP
#  define PIDFD_SIGNAL_PROCESS_GROUP (1U << 2)  /* Linux 6.9 */
# endif

/* PIDFD_GET_INFO (Linux 6.13; the exit status since 6.15), defined here
 * because older kernel headers lack it: the first, 64-byte version. */
struct rb_pidfd_info {
    uint64_t mask;
    uint64_t cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    int32_t exit_code;
};
# define RB_PIDFD_GET_INFO _IOWR(0xFF, 11, struct rb_pidfd_info)
# define RB_PIDFD_INFO_EXIT (1ULL << 3)
# define RB_P_PIDFD ((idtype_t)3)

static int
sys_pidfd_open(rb_pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int
sys_pidfd_send_signal(int fd, int sig, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, flags);
}

/* The wait status waitpid(2) would have given for what waitid(2) saw. */
static int
siginfo_wait_status(const siginfo_t *si)
{
    switch (si->si_code) {
      case CLD_EXITED: return (si->si_status & 0xff) << 8;
      case CLD_KILLED: return si->si_status & 0x7f;
      case CLD_DUMPED: return (si->si_status & 0x7f) | 0x80;
      case CLD_STOPPED:
      case CLD_TRAPPED: return ((si->si_status & 0xff) << 8) | 0x7f;
      default: return 0xffff; /* CLD_CONTINUED */
    }
}

/* The status of a process reaped by someone else, where the kernel keeps
 * it (6.15): 1 and *status; -1 while it is not reaped yet (running, or a
 * zombie its parent has not reaped); 0 where the kernel does not say:
 * before 6.13 (no PIDFD_GET_INFO), and for a reaped process before 6.15
 * (ESRCH). */
static int
pidfd_exit_status(int fd, int *status)
{
    struct rb_pidfd_info info;

    memset(&info, 0, sizeof(info));
    info.mask = RB_PIDFD_INFO_EXIT;
    if (ioctl(fd, RB_PIDFD_GET_INFO, &info) < 0) return 0;
    if (!(info.mask & RB_PIDFD_INFO_EXIT)) return -1;
    *status = info.exit_code;
    return 1;
}

/* Has the process of pidfd `fd` exited (reaped or not)? */
static int
pidfd_exited(int fd)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    int r;

    while ((r = poll(&pfd, 1, 0)) < 0 && errno == EINTR);
    if (r < 0) rb_sys_fail("poll");
    return r > 0;
}

/* A probe at boot: do pidfds work here (kernel, seccomp)? */
static int
pidfd_works(void)
{
    int fd = sys_pidfd_open(getpid());
    siginfo_t si;

    if (fd < 0) return 0;
    /* P_PIDFD (5.4): our own process is not our child. */
    memset(&si, 0, sizeof(si));
    if (waitid(RB_P_PIDFD, fd, &si, WEXITED | WNOHANG) == 0 || errno != ECHILD) {
        close(fd);
        return 0;
    }
    close(fd);
    return 1;
}

rb_pid_t
rb_process_handle_clone(int (*fn)(void *), void *arg, int share_vm, int *pidfd)
{
    /* The child only runs the exec preparation (redirections, chdir,
     * rlimits, close_others) and execve(2): a private stack of 256 KiB
     * with a guard page below it is ample. */
    const size_t guard = 4096, size = 256 * 1024;
    char *map = mmap(NULL, guard + size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    int flags = CLONE_PIDFD | SIGCHLD, fd = -1, err;
    rb_pid_t pid;

    *pidfd = -1;
    if (map == MAP_FAILED) return -1;
    mprotect(map, guard, PROT_NONE);
    if (share_vm) flags |= CLONE_VM | CLONE_VFORK;
    pid = clone(fn, map + guard + size, flags, arg, &fd);
    err = errno;
    munmap(map, guard + size);
    /* Before 5.2 the kernel ignores CLONE_PIDFD and leaves fd alone. */
    if (pid > 0) *pidfd = fd;
    errno = err;
    return pid;
}

void
rb_process_handle_reap_failed(int pidfd)
{
    siginfo_t si;

    /* The child reported why exec failed and is exiting. */
    memset(&si, 0, sizeof(si));
    while (waitid(RB_P_PIDFD, pidfd, &si, WEXITED) < 0 && errno == EINTR);
    close(pidfd);
}

#else /* !USE_PIDFD */

rb_pid_t
rb_process_handle_clone(int (*fn)(void *), void *arg, int share_vm, int *pidfd)
{
    *pidfd = -1;
    errno = ENOSYS;
    return -1;
}

void
rb_process_handle_reap_failed(int pidfd)
{
}
#endif

/* --- reaping ------------------------------------------------------------ */

/* The descriptor, or IOError once the handle was closed. */
static int
handle_fd(struct process_handle *h)
{
    return rb_io_descriptor(h->io);
}

static int
handle_closed_p(const struct process_handle *h)
{
    if (NIL_P(h->io)) return h->closed;
    return RTEST(rb_io_closed_p(h->io));
}

/* IOError once closed, as an IO raises it. */
static void
handle_check_open(const struct process_handle *h)
{
    if (handle_closed_p(h)) rb_raise(rb_eIOError, "closed stream");
}

/* Is there a process with the handle's pid (ours or not)? */
static int
pid_exists(rb_pid_t pid)
{
    return kill(pid, 0) == 0 || errno == EPERM;
}

static VALUE
handle_set_status(struct process_handle *h, VALUE self, int status)
{
    RB_OBJ_WRITE(self, &h->status, rb_process_status_for(h->pid, status, 0));
    return h->status;
}

/*
 * Reaps the child if it has exited, without blocking.  Returns its status
 * (cached from then on), Qnil while it runs, or Qfalse with *eno when
 * there is no status to be had (ECHILD: reaped by someone else and the
 * kernel kept no copy, not our child, or inherited across fork).
 * `options` may add WSTOPPED/WCONTINUED; such statuses are not cached.
 * With the GVL held, so one reaper per process at a time.
 */
static VALUE
handle_reap(VALUE self, struct process_handle *h, int options, int *eno)
{
    if (!NIL_P(h->status)) return h->status;
    if (h->error) {
        *eno = h->error;
        return Qfalse;
    }
    handle_check_open(h);
    if (h->pid == getpid()) {
        /* Process::Handle.open(Process.pid): never our child. */
        *eno = ECHILD;
        return Qfalse;
    }
    if (h->owner != getpid()) {
        /* A copy inherited by a forked child: the process is its sibling,
         * only the parent may reap it or read its status. */
        *eno = ECHILD;
        return Qfalse;
    }
#if USE_PIDFD
    if (!NIL_P(h->io)) {
        int fd = handle_fd(h), status;
        siginfo_t si;

        for (;;) {
            memset(&si, 0, sizeof(si));
            if (waitid(RB_P_PIDFD, fd, &si, WEXITED | WNOHANG | options) == 0) break;
            if (errno == EINTR) continue;
            /* A pidfd made non-blocking (IO#nonblock=, read_nonblock)
             * says EAGAIN instead of "nothing yet". */
            if (errno == EAGAIN) return Qnil;
            if (errno != ECHILD) rb_sys_fail("waitid(P_PIDFD)");
            switch (pidfd_exit_status(fd, &status)) {
              case 1:
                return handle_set_status(h, self, status);
              case -1:
                /* Not our child (Process::Handle.open): running, or exited
                 * and not yet reaped by its parent. */
                *eno = pidfd_exited(fd) ? EINPROGRESS : ECHILD;
                return Qnil;
            }
            if (!pidfd_exited(fd)) {
                *eno = ECHILD;
                return Qnil;
            }
            h->error = *eno = ECHILD;
            return Qfalse;
        }
        if (si.si_pid == 0) return Qnil;
        if (si.si_code == CLD_EXITED || si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
            return handle_set_status(h, self, siginfo_wait_status(&si));
        }
        return rb_process_status_for(h->pid, siginfo_wait_status(&si), 0);
    }
#endif
    {
        int status, flags = WNOHANG;
        rb_pid_t r;

#ifdef WUNTRACED
        if (options & WSTOPPED) flags |= WUNTRACED;
#endif
#ifdef WCONTINUED
        if (options & WCONTINUED) flags |= WCONTINUED;
#endif
        while ((r = waitpid(h->pid, &status, flags)) < 0 && errno == EINTR);
        if (r == 0) return Qnil;
        if (r < 0) {
            int e = errno;

            if (!NIL_P(h->status)) return h->status;
            *eno = e;
            /* Another thread's waitpid(2) got it: the status comes. */
            if (e == ECHILD && h->blocked > 0) return Qnil;
            /* Not our child, but alive: nothing to reap (yet). */
            if (e == ECHILD && pid_exists(h->pid)) return Qfalse;
            /* Stolen by another waiter: the pid may name another process
             * soon, so the handle stops using it. */
            h->error = e;
            return Qfalse;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) return handle_set_status(h, self, status);
        return rb_process_status_for(h->pid, status, 0);
    }
}

/* A status of handle_reap()/handle_wait(), raising for Qfalse. */
static VALUE
status_or_raise(struct process_handle *h, VALUE status, int eno)
{
    if (status == Qfalse) rb_syserr_fail(eno, NIL_P(h->io) ? "waitpid" : "waitid");
    return status;
}

static VALUE
handle_reap_or_raise(VALUE self, struct process_handle *h, int options)
{
    int eno = 0;
    VALUE status = handle_reap(self, h, options, &eno);
    return status_or_raise(h, status, eno);
}

static double
monotonic_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Without a pidfd: waitpid(pid) (or the scheduler's #process_wait) for
 * the handle, counted in h->blocked until the status it got is cached, so
 * that concurrent waiters told ECHILD know to look for it. */
static VALUE
blocking_wait(VALUE self)
{
    struct process_handle *h = handle_get(self);
    VALUE status;

    h->blocked++;
    status = rb_process_status_wait(h->pid, 0);
    if (!NIL_P(status) && NIL_P(h->status) && NUM2PIDT(rb_funcall(status, id_pid, 0)) == h->pid) {
        RB_OBJ_WRITE(self, &h->status, status);
    }
    return status;
}

static VALUE
blocking_wait_done(VALUE self)
{
    handle_get(self)->blocked--;
    return Qnil;
}

/*
 * Waits until the child exits, at most `timeout` seconds (nil: no limit).
 * Returns its status, nil on timeout, or Qfalse with *eno when the status
 * cannot be had (see handle_reap).
 */
static VALUE
handle_wait(VALUE self, VALUE timeout, int *eno)
{
    struct process_handle *h = handle_get(self);
    double deadline = 0;
    int hooked = 0;
    VALUE status;

    if (!NIL_P(timeout)) {
        double t = NUM2DBL(timeout);
        if (t < 0) rb_raise(rb_eArgError, "time interval must not be negative");
        if (isinf(t)) timeout = Qnil;
        deadline = monotonic_now() + t;
    }
    for (;;) {
        VALUE remaining = Qnil;

        *eno = 0;
        status = handle_reap(self, h, 0, eno);
        if (!NIL_P(status)) return status;
        if (!NIL_P(timeout)) {
            double left = deadline - monotonic_now();
            if (left <= 0) return Qnil;
            remaining = DBL2NUM(left);
        }
        else if (!hooked && !NIL_P(h->adopter) && !NIL_P(h->io) && h->adopter == rb_fiber_scheduler_current()) {
            /* The scheduler that adopted the handle waits for it, once;
             * if it returns early, the IO wait below takes over. */
            VALUE result = rb_fiber_scheduler_process_wait_handle(h->adopter, self, h->io, 0);
            hooked = 1;
            if (!UNDEF_P(result)) {
                if (NIL_P(h->status) && !h->error && rb_obj_is_kind_of(result, rb_path2class("Process::Status")) &&
                    NUM2PIDT(rb_funcall(result, id_pid, 0)) == h->pid) {
                    /* The scheduler reaped it itself. */
                    RB_OBJ_WRITE(self, &h->status, result);
                }
                continue;
            }
        }
        if (*eno == EINPROGRESS) {
            /* Another process's child, exited: its status comes when its
             * parent reaps it, which nothing signals.  Poll. */
            rb_thread_wait_for(rb_time_interval(DBL2NUM(0.005)));
        }
        else if (!NIL_P(h->io)) {
            if (!RTEST(rb_io_wait(h->io, RB_INT2NUM(RUBY_IO_READABLE), remaining)) && !NIL_P(timeout)) {
                if (deadline - monotonic_now() <= 0) return Qnil;
            }
        }
        else if (NIL_P(timeout)) {
            /* No pidfd: a blocking wait by pid, through the scheduler's
             * #process_wait as Process.wait(pid) goes. */
            status = rb_ensure(blocking_wait, self, blocking_wait_done, self);
            if (!NIL_P(status) && NIL_P(h->status)) {
                /* ECHILD: another thread of ours may have the status from
                 * the kernel and not have cached it yet. */
                while (NIL_P(h->status) && h->blocked > 0) {
                    rb_thread_wait_for(rb_time_interval(DBL2NUM(0.001)));
                }
                if (NIL_P(h->status) && !pid_exists(h->pid)) h->error = ECHILD;
                if (NIL_P(h->status) && !h->error) {
                    *eno = ECHILD; /* not our child */
                    return Qfalse;
                }
            }
        }
        else {
            /* No pidfd and a time limit: poll. */
            double left = NUM2DBL(remaining);
            rb_thread_wait_for(rb_time_interval(DBL2NUM(left < 0.01 ? left : 0.01)));
        }
    }
}

static VALUE
handle_wait_or_raise(VALUE self, VALUE timeout)
{
    int eno = 0;
    VALUE status = handle_wait(self, timeout, &eno);
    return status_or_raise(handle_get(self), status, eno);
}

/* --- creation ---------------------------------------------------------- */

static VALUE
handle_alloc(VALUE klass, rb_pid_t pid, int pidfd, int race_free)
{
    struct process_handle *h;
    VALUE self = TypedData_Make_Struct(klass, struct process_handle, &handle_type, h);

    h->io = h->status = h->adopter = Qnil;
    h->pid = pid;
    h->owner = getpid();
    h->race_free = race_free && pidfd >= 0;
    if (pidfd >= 0) {
        VALUE path = rb_sprintf("pidfd:%ld", (long)pid);
        RB_OBJ_WRITE(self, &h->io, rb_io_open_descriptor(rb_cIO, pidfd, FMODE_READABLE, path, Qnil, NULL));
    }
    return self;
}

static VALUE
process_open_call(VALUE self)
{
    return rb_fiber_scheduler_process_open(rb_fiber_scheduler_current(), self);
}

/*
 * Offers a new handle to the current scheduler (#process_open).  If the
 * hook raises, nobody will receive the handle: it is detached as an
 * orphan (reaped at exit, its pidfd closed then) and the error raised.
 */
static VALUE
handle_opened(VALUE self)
{
    struct process_handle *h = handle_get(self);
    VALUE result;
    int state = 0;

    if (NIL_P(rb_fiber_scheduler_current())) return self;
    result = rb_protect(process_open_call, self, &state);
    if (state) {
        if (!handle_closed_p(h)) {
            h->orphan = 1;
            rb_process_handle_detach(self);
        }
        rb_jump_tag(state);
    }
    if (!UNDEF_P(result) && RTEST(result)) {
        RB_OBJ_WRITE(self, &h->adopter, rb_fiber_scheduler_current());
    }
    return self;
}

struct spawn_args {
    int argc;
    const VALUE *argv;
    int *pidfd;
};

static VALUE
spawn_call(VALUE ptr)
{
    struct spawn_args *a = (struct spawn_args *)ptr;
    return rb_process_spawn_pidfd(a->argc, a->argv, a->pidfd);
}

static VALUE
spawn_out_of_fds(VALUE ptr, VALUE exc)
{
    return Qundef;
}

/*
 *  call-seq:
 *    Process::Handle.spawn([env,] command... [,options]) -> handle
 *
 *  Creates a child process exactly as Process.spawn does (same arguments,
 *  same exceptions) and returns a handle for it instead of its pid.
 *
 *  On Linux the pidfd comes from clone(2) with CLONE_PIDFD, so the handle
 *  refers to this child from the moment it exists.  When exec fails,
 *  the child is reaped and its pidfd closed before the exception is
 *  raised.
 *
 *    h = Process::Handle.spawn("sleep", "1")
 *    h.pid   # => 12345
 *    h.wait  # => #<Process::Status: pid 12345 exit 0>
 */
static VALUE
handle_s_spawn(int argc, VALUE *argv, VALUE klass)
{
    int pidfd = -1;
    struct spawn_args a = {argc, argv, pidfd_enabled ? &pidfd : NULL};
    VALUE pid;

    /* The pidfd is one more descriptor than Process.spawn needs: when
     * they run out, a GC may free some, as for IO.pipe. */
    pid = rb_rescue2(spawn_call, (VALUE)&a, spawn_out_of_fds, Qnil,
                     rb_const_get(rb_mErrno, rb_intern("EMFILE")),
                     rb_const_get(rb_mErrno, rb_intern("ENFILE")), (VALUE)0);
    if (UNDEF_P(pid)) {
        rb_gc();
        pid = spawn_call((VALUE)&a);
    }
    return handle_opened(handle_alloc(klass, NUM2PIDT(pid), pidfd, 1));
}

struct rb_process_handle_fork {
    int go[2];       /* the child reads a byte from go[0] before it runs */
    int pidfd;
    int used;        /* rb_fork_ruby() did the handshake */
    int returned;    /* Process.fork returned normally */
    VALUE thread;    /* the thread in Process::Handle.fork */
    struct rb_process_handle_fork *next;
};

/* The Process::Handle.fork calls in progress, one per thread at most (a
 * Process._fork override may switch threads before it forks). */
static struct rb_process_handle_fork *fork_requests;

struct rb_process_handle_fork *
rb_process_handle_fork_request(void)
{
    struct rb_process_handle_fork *req;
    VALUE thread = rb_thread_current();

    for (req = fork_requests; req; req = req->next) {
        if (req->thread == thread) return !req->used && req->go[0] >= 0 ? req : NULL;
    }
    return NULL;
}

void
rb_process_handle_fork_child(struct rb_process_handle_fork *req)
{
    struct rb_process_handle_fork *other;
    char c;

    if (req) {
        /* Every signal is blocked here (rb_fork_ruby), so no EINTR but for
         * stops; a byte, not EOF: copies of go[1] in other children cannot
         * hold the child back. */
        close(req->go[1]);
        while (read(req->go[0], &c, 1) < 0 && errno == EINTR);
        close(req->go[0]);
        req->go[0] = req->go[1] = -1;
        req->used = 1;
    }
    /* The other threads' requests are the parent's: their pipes too. */
    for (other = fork_requests; other; other = other->next) {
        if (other == req) continue;
        if (other->go[0] >= 0) close(other->go[0]);
        if (other->go[1] >= 0) close(other->go[1]);
    }
    fork_requests = NULL;
}

void
rb_process_handle_fork_parent(struct rb_process_handle_fork *req, rb_pid_t pid)
{
#if USE_PIDFD
    /* The child cannot exit before it has its byte, so nobody can have
     * reaped it yet: pidfd_open(2) gets this child. */
    close(req->go[0]);
    req->go[0] = -1;
    req->pidfd = sys_pidfd_open(pid);
    if (req->pidfd >= 0) rb_update_max_fd(req->pidfd);
    while (write(req->go[1], "g", 1) < 0 && errno == EINTR);
    close(req->go[1]);
    req->go[1] = -1;
#endif
    req->used = 1;
}

static VALUE
fork_call(VALUE ptr)
{
    struct rb_process_handle_fork *req = (struct rb_process_handle_fork *)ptr;
    VALUE pid = rb_funcall_passing_block(rb_mProcess, id_fork, 0, NULL);

    req->returned = 1;
    return pid;
}

static VALUE
fork_done(VALUE ptr)
{
    struct rb_process_handle_fork *req = (struct rb_process_handle_fork *)ptr, **p;

    for (p = &fork_requests; *p; p = &(*p)->next) {
        if (*p == req) {
            *p = req->next;
            break;
        }
    }
    if (req->go[0] >= 0) close(req->go[0]);
    if (req->go[1] >= 0) close(req->go[1]);
    req->go[0] = req->go[1] = -1;
    /* Unwound (an exception, Thread#kill, throw) after the fork: the
     * pidfd nobody will get. */
    if (!req->returned && req->pidfd >= 0) {
        close(req->pidfd);
        req->pidfd = -1;
    }
    return Qnil;
}

/* The handshake pipe: blocking (the child must wait in read(2)), close
 * on exec; retried after a GC when descriptors run out. */
static void
handshake_pipe(int go[2])
{
#if USE_PIDFD
    int retried = 0;

    while (pipe2(go, O_CLOEXEC) < 0) {
        if (retried || (errno != EMFILE && errno != ENFILE)) rb_sys_fail("pipe2");
        rb_gc();
        retried = 1;
    }
    rb_update_max_fd(go[0]);
    rb_update_max_fd(go[1]);
#endif
}

/*
 *  call-seq:
 *    Process::Handle.fork -> handle or nil
 *    Process::Handle.fork { ... } -> handle
 *
 *  Forks as Process.fork does (Process._fork and its overrides run, the
 *  child gets #process_fork) and returns a handle for the child in the
 *  parent.  In the child, without a block, returns +nil+; with a block,
 *  the child runs it and exits.
 *
 *  The child waits, before it runs anything, until the parent holds its
 *  pidfd, so the handle cannot refer to another process even if a thread
 *  reaps every child with Process.wait(-1).
 */
static VALUE
handle_s_fork(VALUE klass)
{
    struct rb_process_handle_fork req = {{-1, -1}, -1, 0, 0, rb_thread_current(), NULL};
    VALUE pid;
    rb_pid_t child;
    int race_free;

    if (pidfd_enabled) handshake_pipe(req.go);
    req.next = fork_requests;
    fork_requests = &req;
    pid = rb_ensure(fork_call, (VALUE)&req, fork_done, (VALUE)&req);
    if (NIL_P(pid)) return Qnil; /* the child */
    child = NUM2PIDT(pid);
    race_free = req.used && req.pidfd >= 0;
#if USE_PIDFD
    if (pidfd_enabled && !req.used) {
        /* An override of Process._fork forked without Process._fork's
         * default: the pid is fresh, but no longer guaranteed. */
        req.pidfd = sys_pidfd_open(child);
        if (req.pidfd >= 0) rb_update_max_fd(req.pidfd);
    }
#endif
    return handle_opened(handle_alloc(klass, child, req.pidfd, race_free));
}

/*
 *  call-seq:
 *    Process::Handle.open(pid) -> handle
 *
 *  Returns a handle for the existing process +pid+, which need not be a
 *  child: any process can be signalled, and its exit awaited (#wait,
 *  #to_io).  A child can be reaped.  For other processes, #wait returns
 *  the status once their parent has reaped them, where the kernel keeps
 *  it for pidfds (Linux 6.15; it polls between their exit and that reap),
 *  and raises Errno::ECHILD at their exit on older kernels.  Without
 *  pidfds, #wait raises Errno::ECHILD for them, as Process.wait(pid)
 *  does.
 *
 *  Raises Errno::ESRCH if there is no such process.  The pid is resolved
 *  now: if the process was reaped and the number reused before this call,
 *  the handle refers to the new process, so open only pids that cannot
 *  have been reaped yet (your own unreaped children, for example).
 */
static VALUE
handle_s_open(VALUE klass, VALUE vpid)
{
    rb_pid_t pid = NUM2PIDT(vpid);
    int pidfd = -1;

    if (pid <= 0) rb_raise(rb_eArgError, "pid must be positive: %ld", (long)pid);
#if USE_PIDFD
    if (pidfd_enabled) {
        pidfd = sys_pidfd_open(pid);
        if (pidfd < 0 && (errno == EMFILE || errno == ENFILE)) {
            rb_gc();
            pidfd = sys_pidfd_open(pid);
        }
        if (pidfd < 0) rb_sys_fail("pidfd_open");
        rb_update_max_fd(pidfd);
    }
#endif
    if (pidfd < 0 && kill(pid, 0) < 0 && errno == ESRCH) rb_sys_fail("kill");
    return handle_opened(handle_alloc(klass, pid, pidfd, 1));
}

/* --- methods ------------------------------------------------------------ */

/*
 *  call-seq:
 *    pid -> integer
 *
 *  The process ID, also once the process has been reaped.  Only for
 *  reports: the number may name another process by then.  There is no
 *  implicit conversion: <tt>Integer(handle)</tt> raises TypeError.
 */
static VALUE
handle_pid(VALUE self)
{
    return PIDT2NUM(handle_get(self)->pid);
}

void
rb_process_handle_kill(VALUE self, int sig)
{
    struct process_handle *h = handle_get(self);
    int group = sig < 0;

    if (group) sig = -sig;
#if USE_PIDFD
    if (!NIL_P(h->io)) {
        int fd = handle_fd(h);

        if (sys_pidfd_send_signal(fd, sig, group ? PIDFD_SIGNAL_PROCESS_GROUP : 0) == 0) return;
        if (errno != EINVAL || !group) rb_sys_fail(0);
        /* No PIDFD_SIGNAL_PROCESS_GROUP (before 6.9): the group by its
         * number, while the leader is known to be alive. */
        if (sys_pidfd_send_signal(fd, 0, 0) < 0) rb_sys_fail(0);
        if (killpg(h->pid, sig) < 0) rb_sys_fail(0);
        return;
    }
#endif
    /* No pidfd: once this handle reaped the child, the pid is not its. */
    handle_check_open(h);
    if (!NIL_P(h->status) || h->error) rb_syserr_fail(ESRCH, 0);
    if ((group ? killpg(h->pid, sig) : kill(h->pid, sig)) < 0) rb_sys_fail(0);
}

/*
 *  call-seq:
 *    kill(signal = :TERM) -> self
 *
 *  Sends +signal+ (a name or number, as for Process.kill; negative
 *  signals the process group) to the process, through the pidfd where
 *  there is one: after the process was reaped this raises Errno::ESRCH and
 *  never reaches another process that got the same pid.
 *  Process.kill(signal, handle) does the same.
 */
static VALUE
handle_kill(int argc, VALUE *argv, VALUE self)
{
    VALUE args[2];

    rb_check_arity(argc, 0, 1);
    args[0] = argc > 0 ? argv[0] : ID2SYM(rb_intern("TERM"));
    args[1] = self;
    rb_f_kill(2, args);
    return self;
}

/*
 *  call-seq:
 *    wait(timeout = nil) -> Process::Status or nil
 *
 *  Waits for the process to exit, at most +timeout+ seconds, and returns
 *  its status, or +nil+ if the time ran out.  The process is reaped once;
 *  every later or concurrent #wait, from any thread or fiber, returns the
 *  same frozen Process::Status.  Does not set <tt>$?</tt>
 *  (Process.wait(handle) does).
 *
 *  Under a fiber scheduler the wait is an IO wait on the pidfd
 *  (Fiber::Scheduler#io_wait), or the scheduler's #process_wait if it
 *  adopted the handle (#process_open) and there is no timeout.
 *
 *  Raises Errno::ECHILD if there is no status to be had: the handle was
 *  inherited across fork, is this process itself, or another waiter
 *  (Process.wait(-1), say) reaped the child on a kernel that keeps no copy
 *  for pidfds (before 6.15).  For a process that is not a child, see
 *  Process::Handle.open.  Process.wait(handle) waits the same way.
 */
static VALUE
handle_wait_m(int argc, VALUE *argv, VALUE self)
{
    rb_check_arity(argc, 0, 1);
    return handle_wait_or_raise(self, argc > 0 ? argv[0] : Qnil);
}

/*
 *  call-seq:
 *    wait_nonblock -> Process::Status or nil
 *
 *  Reaps the process if it has exited and returns its status, else
 *  returns +nil+ at once.  Never blocks and never calls a scheduler hook,
 *  so a scheduler's #process_wait can use it once the pidfd is readable.
 *  Raises as #wait does.
 */
static VALUE
handle_wait_nonblock(VALUE self)
{
    return handle_reap_or_raise(self, handle_get(self), 0);
}

/*
 *  call-seq:
 *    status -> Process::Status or nil
 *
 *  The status once the process was reaped (by #wait and friends), else
 *  +nil+.  Makes no system call.
 */
static VALUE
handle_status(VALUE self)
{
    return handle_get(self)->status;
}

/*
 *  call-seq:
 *    exited? -> true or false
 *
 *  Whether the process has exited (reaped or not).  With a pidfd, reaps
 *  nothing; without one (Process::Handle.race_free? false), reaping a
 *  child is the only way to know, and its status is cached.
 */
static VALUE
handle_exited_p(VALUE self)
{
    struct process_handle *h = handle_get(self);

    if (!NIL_P(h->status) || h->error) return Qtrue;
    handle_check_open(h);
#if USE_PIDFD
    if (!NIL_P(h->io)) return RBOOL(pidfd_exited(handle_fd(h)));
#endif
    {
        /* No pidfd: reaping tells for a child; for another process, or
         * a child another waiter reaps right now, whether the pid is
         * still there. */
        int eno = 0;
        VALUE status = handle_reap(self, h, 0, &eno);

        if (status == Qfalse) return RBOOL(h->error || !pid_exists(h->pid));
        return RBOOL(!NIL_P(status));
    }
}

/*
 *  call-seq:
 *    alive? -> true or false
 *
 *  The opposite of #exited?.
 */
static VALUE
handle_alive_p(VALUE self)
{
    return RBOOL(!RTEST(handle_exited_p(self)));
}

/*
 *  call-seq:
 *    to_io -> io
 *
 *  The IO that owns the pidfd.  It becomes readable when the process
 *  exits, so IO.select, IO#wait_readable and schedulers' #io_wait work on
 *  it; it cannot be read.  Closing it closes the handle.  Raises
 *  NotImplementedError where the handle has no pidfd
 *  (Process::Handle.race_free? is false).
 */
static VALUE
handle_to_io(VALUE self)
{
    struct process_handle *h = handle_get(self);

    if (NIL_P(h->io)) rb_raise(rb_eNotImpError, "Process::Handle#to_io: no pidfd on this system");
    return h->io;
}

/*
 *  call-seq:
 *    close -> nil
 *
 *  Closes the pidfd.  The process is neither signalled nor reaped: reap it
 *  first, or detach it, or it stays a zombie until this process exits.
 *  #pid and #status keep working; #kill and waits for a status not yet
 *  cached raise IOError.  Closing twice does nothing.
 */
static VALUE
handle_close(VALUE self)
{
    struct process_handle *h = handle_get(self);

    if (NIL_P(h->io)) h->closed = 1;
    else if (!handle_closed_p(h)) rb_io_close(h->io);
    return Qnil;
}

/*
 *  call-seq:
 *    closed? -> true or false
 */
static VALUE
handle_closed(VALUE self)
{
    return RBOOL(handle_closed_p(handle_get(self)));
}

static VALUE
sweep_reap(VALUE self)
{
    struct process_handle *h = handle_get(self);
    int eno = 0;

    if (handle_closed_p(h)) return Qtrue;
    return RBOOL(!NIL_P(handle_reap(self, h, 0, &eno)));
}

/* Done with a detached handle: forget it (an orphan's pidfd closes). */
static void
detach_done(VALUE self)
{
    struct process_handle *h = handle_get(self);

    rb_ary_delete(detached, self);
    if (h->orphan) handle_close(self);
}

/* Reaps the detached handles whose process has exited.  Never raises: it
 * runs where SIGCHLD is handled. */
void
rb_process_handle_sweep(void)
{
    long i;

    if (!detached || RARRAY_LEN(detached) == 0) return;
    for (i = RARRAY_LEN(detached) - 1; i >= 0; i--) {
        VALUE self;
        int state = 0;
        VALUE done;

        if (i >= RARRAY_LEN(detached)) continue;
        self = RARRAY_AREF(detached, i);
        if (handle_get(self)->waiter) continue; /* a thread reaps it */
        done = rb_protect(sweep_reap, self, &state);
        if (state) rb_set_errinfo(Qnil);
        if (state || RTEST(done)) detach_done(self);
    }
}

/* Does SIGCHLD reach Ruby's handler (so rb_signal_exec sweeps)?  Not
 * after trap(:CHLD, "SYSTEM_DEFAULT") or "IGNORE". */
static int
sigchld_reaches_ruby(void)
{
#ifdef SIGCHLD
    struct sigaction sa;

    if (sigaction(SIGCHLD, NULL, &sa) < 0) return 1;
    if (sa.sa_flags & SA_SIGINFO) return 1;
    return sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN;
#else
    return 0;
#endif
}

static VALUE
detach_wait(void *ptr)
{
    VALUE self = (VALUE)ptr;
    int eno = 0;

    handle_wait(self, Qnil, &eno);
    return Qnil;
}

static VALUE
detach_wait_done(VALUE self)
{
    handle_get(self)->waiter = 0;
    detach_done(self);
    return Qnil;
}

static VALUE
detach_thread(void *ptr)
{
    return rb_ensure((VALUE (*)(VALUE))detach_wait, (VALUE)ptr, detach_wait_done, (VALUE)ptr);
}

VALUE
rb_process_handle_detach(VALUE self)
{
    struct process_handle *h = handle_get(self);
    int eno = 0;

    if (h->detached) return self;
    handle_check_open(h);
    h->detached = 1;
    if (!NIL_P(handle_reap(self, h, 0, &eno))) {
        if (h->orphan) handle_close(self);
        return self;
    }
    /* Kept alive (and its process found) by the list until reaped. */
    rb_ary_push(detached, self);
    if (!sigchld_reaches_ruby()) {
        /* No SIGCHLD for the sweep: a thread, as Process.detach(pid). */
        h->waiter = 1;
        rb_thread_create(detach_thread, (void *)self);
    }
    return self;
}

/*
 *  call-seq:
 *    detach -> self
 *
 *  Lets the process be reaped as soon as it exits, without a thread
 *  (Process.detach(pid) starts one per process): the handle is reaped when
 *  this process receives SIGCHLD, and its status cached for #wait and
 *  #status.  Process.detach(handle) does the same and returns the handle.
 *
 *  The handle is kept alive until then; afterwards it can be dropped
 *  without a zombie.  Where SIGCHLD does not reach Ruby (after
 *  <tt>trap(:CHLD, "SYSTEM_DEFAULT")</tt> or <tt>"IGNORE"</tt> at the time
 *  of the call), a thread waits for the process, as Process.detach(pid)
 *  does.  If a C extension replaces Ruby's SIGCHLD handler, detached
 *  processes are reaped only when waited for.
 */
static VALUE
handle_detach_m(VALUE self)
{
    return rb_process_handle_detach(self);
}

/*
 *  call-seq:
 *    detached? -> true or false
 */
static VALUE
handle_detached_p(VALUE self)
{
    return RBOOL(handle_get(self)->detached);
}

/*
 *  call-seq:
 *    race_free? -> true or false
 *
 *  Whether this handle holds its process by a pidfd obtained when the
 *  process was created (or, for Process::Handle.open, when the handle
 *  was).
 */
static VALUE
handle_race_free_p(VALUE self)
{
    return RBOOL(handle_get(self)->race_free);
}

/*
 *  call-seq:
 *    Process::Handle.race_free? -> true or false
 *
 *  Whether handles hold pidfds here.  +false+ on systems without them, on
 *  Linux before 5.4, where seccomp refuses pidfd_open(2), and when the
 *  environment variable RUBY_PROCESS_HANDLE_PIDFD was +0+ at startup: then
 *  handles work by pid (a reaped pid can be reused), have no #to_io, and
 *  timed waits poll.
 */
static VALUE
handle_s_race_free_p(VALUE klass)
{
    return RBOOL(pidfd_enabled);
}

/*
 *  call-seq:
 *    adopted? -> true or false
 *
 *  Whether a fiber scheduler adopted the handle through #process_open.
 */
static VALUE
handle_adopted_p(VALUE self)
{
    return RBOOL(!NIL_P(handle_get(self)->adopter));
}

static VALUE
handle_inspect(VALUE self)
{
    struct process_handle *h = handle_get(self);
    VALUE str = rb_sprintf("#<%"PRIsVALUE": ", rb_class_name(CLASS_OF(self)));

    if (!NIL_P(h->status)) rb_str_append(str, rb_funcall(h->status, rb_intern("to_s"), 0));
    else rb_str_catf(str, "pid %ld %s", (long)h->pid, h->error ? "lost" : "running");
    if (handle_closed_p(h)) rb_str_cat_cstr(str, " (closed)");
    rb_str_cat_cstr(str, ">");
    return str;
}

VALUE
rb_process_handle_status_wait(VALUE self, int flags)
{
    struct process_handle *h = handle_get(self);
    int eno = 0, options = 0;
    VALUE status;

#ifdef WUNTRACED
    if (flags & WUNTRACED) options |= WSTOPPED;
#endif
#ifdef WCONTINUED
    if (flags & WCONTINUED) options |= WCONTINUED;
#endif
    if (flags & WNOHANG) {
        status = handle_reap(self, h, options, &eno);
    }
    else if (options) {
        /* The pidfd reports exits only: stops and continues by polling. */
        while (NIL_P(status = handle_reap(self, h, options, &eno))) {
            if (NIL_P(h->io) || eno == EINPROGRESS) rb_thread_wait_for(rb_time_interval(DBL2NUM(0.01)));
            else rb_io_wait(h->io, RB_INT2NUM(RUBY_IO_READABLE), DBL2NUM(0.01));
            eno = 0;
        }
    }
    else {
        status = handle_wait(self, Qnil, &eno);
    }
    if (status == Qfalse) return rb_process_status_for(-1, 0, eno);
    return status;
}

void
Init_process_handle(void)
{
    const char *env = getenv("RUBY_PROCESS_HANDLE_PIDFD");

#if USE_PIDFD
    pidfd_enabled = !(env && strcmp(env, "0") == 0) && pidfd_works();
#else
    pidfd_enabled = 0;
#endif
    id_fork = rb_intern_const("fork");
    id_pid = rb_intern_const("pid");
    detached = rb_ary_hidden_new(0);
    rb_gc_register_address(&detached);

    /*
     *  A child process held by a descriptor where the system has one (a
     *  Linux pidfd): signals and waits always reach that process, never
     *  another that was given the same pid after it was reaped.  See
     *  Process::Handle.spawn, Process::Handle.fork, Process::Handle.open.
     *
     *  Process.kill, Process.wait, Process.wait2, Process::Status.wait and
     *  Process.detach accept a handle where they accept a pid.
     */
    rb_cProcessHandle = rb_define_class_under(rb_mProcess, "Handle", rb_cObject);
    rb_undef_alloc_func(rb_cProcessHandle);
    rb_undef_method(CLASS_OF(rb_cProcessHandle), "new");
    rb_define_singleton_method(rb_cProcessHandle, "spawn", handle_s_spawn, -1);
    rb_define_singleton_method(rb_cProcessHandle, "fork", handle_s_fork, 0);
    rb_define_singleton_method(rb_cProcessHandle, "open", handle_s_open, 1);
    rb_define_singleton_method(rb_cProcessHandle, "race_free?", handle_s_race_free_p, 0);
    rb_define_method(rb_cProcessHandle, "pid", handle_pid, 0);
    rb_define_method(rb_cProcessHandle, "kill", handle_kill, -1);
    rb_define_method(rb_cProcessHandle, "wait", handle_wait_m, -1);
    rb_define_method(rb_cProcessHandle, "wait_nonblock", handle_wait_nonblock, 0);
    rb_define_method(rb_cProcessHandle, "status", handle_status, 0);
    rb_define_method(rb_cProcessHandle, "exited?", handle_exited_p, 0);
    rb_define_method(rb_cProcessHandle, "alive?", handle_alive_p, 0);
    rb_define_method(rb_cProcessHandle, "to_io", handle_to_io, 0);
    rb_define_method(rb_cProcessHandle, "close", handle_close, 0);
    rb_define_method(rb_cProcessHandle, "closed?", handle_closed, 0);
    rb_define_method(rb_cProcessHandle, "detach", handle_detach_m, 0);
    rb_define_method(rb_cProcessHandle, "detached?", handle_detached_p, 0);
    rb_define_method(rb_cProcessHandle, "race_free?", handle_race_free_p, 0);
    rb_define_method(rb_cProcessHandle, "adopted?", handle_adopted_p, 0);
    rb_define_method(rb_cProcessHandle, "inspect", handle_inspect, 0);
}
