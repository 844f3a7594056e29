/**********************************************************************

  io/uring/process.c - process hooks of IO::Uring::Scheduler.

  #process_wait (IORING_OP_WAITID on a pidfd, then a reap through it),
  #process_open (adopts Process::Handle) and #process_fork (a forked
  child's new scheduler).

**********************************************************************/

#include "uring.h"

#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>

#ifndef P_PIDFD
# define P_PIDFD ((idtype_t)3)
#endif

static VALUE cProcessHandle = Qnil;
static ID id_to_io;

/*
 *  call-seq: process_fork -> new scheduler
 *
 *  Called in a forked child on the scheduler its thread had in the parent.
 *  Drops the parent's ring without submitting to it or reaping from it
 *  (the queues are shared with the parent, which goes on using them), and
 *  the parent's fibers with it; this scheduler is closed from then on.
 *  Returns a new scheduler of the same class, with a ring of its own, for
 *  the child.
 */
VALUE
scheduler_process_fork(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (s->ring_live && s->generation == fork_generation) {
        rb_raise(rb_eRuntimeError, "IO::Uring::Scheduler#process_fork is for a forked child");
    }
    if (s->ring_live) scheduler_forget_parent(s);
    s->closed = 1;
    return rb_class_new_instance(0, NULL, rb_obj_class(self));
}

static VALUE
status_wait_i(RB_BLOCK_CALL_FUNC_ARGLIST(_, data))
{
    const VALUE *args = (const VALUE *)data;
    return rb_funcall(cProcessStatus, rb_intern("wait"), 2, args[0], args[1]);
}

/* Process::Status.wait(pid, flags) in a blocking fiber (else it comes back
 * to this hook): reaps and builds the status. */
static VALUE
status_wait(VALUE pid, int flags)
{
    VALUE args[2] = {pid, INT2NUM(flags)};
    return rb_block_call(cFiber, rb_intern("blocking"), 0, NULL, status_wait_i, (VALUE)args);
}

static int
waitid_options(int flags)
{
    int options = 0;

    if (flags & WUNTRACED) options |= WSTOPPED;
#ifdef WCONTINUED
    if (flags & WCONTINUED) options |= WCONTINUED;
#endif
    return options;
}

struct process_wait_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    int fd;
    int options;                /* WSTOPPED, WCONTINUED */
};

/* Suspends the fiber until the process of pidfd `a->fd` can be reaped,
 * leaving it waitable (WNOWAIT), so an interrupted wait loses nothing.
 * Returns 0, or -ECHILD when it is not (or no longer) ours to reap. */
static int32_t
pidfd_wait(struct process_wait_args *a)
{
    struct uring_scheduler *s = a->s;
    struct uring_op op = {0};
    siginfo_t info;
    int32_t result;

    hook_check(&a->hook);
    memset(&info, 0, sizeof(info));
    io_uring_prep_waitid(op_sqe(s, &op), P_PIDFD, (id_t)a->fd, &info, WEXITED | WNOWAIT | a->options, 0);
    result = hook_wait(s, &a->hook, &op);
    if (result == 0 && info.si_pid != 0) return 0;
    if (result == -ECHILD) return -ECHILD;
    /* The kernel cannot wait on this pidfd (a pidfd made non-blocking
     * completes at once with no process; before 6.7 no WAITID): wait for
     * the exit with a poll. */
    result = hook_poll(s, &a->hook, a->fd, POLLIN, NULL);
    if (result < 0 && result != -ECANCELED) rb_syserr_fail(-result, "process_wait");
    return 0;
}

static VALUE
process_wait_leave(VALUE ptr)
{
    struct process_wait_args *a = (struct process_wait_args *)ptr;
    hook_leave(a->s, &a->hook);
    return Qnil;
}

#ifdef HAVE_RB_PROCESS_STATUS_FOR
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

struct pid_wait_args {
    struct process_wait_args w;
    rb_pid_t pid;
};

/* #process_wait(pid) for one pid: through a pidfd opened now, so the reap
 * is of the process that was waited for even if another waiter reaps it
 * in between and the pid is reused. */
static VALUE
pid_wait(VALUE ptr)
{
    struct pid_wait_args *a = (struct pid_wait_args *)ptr;

    for (;;) {
        siginfo_t info;

        if (pidfd_wait(&a->w) < 0) break;
        memset(&info, 0, sizeof(info));
        if (waitid(P_PIDFD, a->w.fd, &info, WEXITED | WNOHANG | a->w.options) < 0) {
            if (errno == EINTR) continue;
            if (errno == ECHILD) break;
            rb_sys_fail("waitid");
        }
        if (info.si_pid != 0) return rb_process_status_for(a->pid, siginfo_wait_status(&info), 0);
        /* Nothing after all (a stop another waiter consumed): again. */
    }
    /* Reaped by another waiter, or not our child: as waitpid(2) says. */
    return rb_process_status_for(-1, 0, ECHILD);
}

static VALUE
pid_wait_close(VALUE ptr)
{
    struct pid_wait_args *a = (struct pid_wait_args *)ptr;
    process_wait_leave((VALUE)&a->w);
    close(a->w.fd);
    return Qnil;
}
#endif

/* #process_wait(handle) for a Process::Handle this scheduler adopted. */
static VALUE
handle_wait(VALUE ptr)
{
    struct process_wait_args *a = (struct process_wait_args *)ptr;

    pidfd_wait(a);
    /* -ECHILD as well: the handle recovers a stolen status or reports it
     * (core raises ECHILD for #wait, a pid -1 status for
     * Process::Status.wait). */
    return Qnil;
}

/*
 *  call-seq:
 *    process_wait(pid, flags) -> Process::Status or nil
 *    process_wait(handle, flags) -> nil
 *
 *  With a pid (a process, -1 for any child, 0 or -pgid for a process
 *  group, as for waitpid(2)), waits with IORING_OP_WAITID until a child it
 *  designates can be reaped, leaving it waitable (WNOWAIT), then reaps it.
 *  A single pid is waited for through a pidfd opened on entry, and reaped
 *  through it: another thread's Process.wait(-1) in between cannot make
 *  this reap another process that got the same pid (the result is then
 *  the ECHILD that waitpid(2) gives).  Groups and -1 are reaped through
 *  Process::Status.wait with the same selector.  With WNOHANG in +flags+,
 *  it only reaps.
 *
 *  With a Process::Handle that #process_open adopted, waits through its
 *  pidfd the same way and returns +nil+: core then reaps the handle and
 *  gives every waiter its status.  An IO#close of the handle interrupts
 *  the wait.
 *
 *  A wait interrupted (Timeout, Fiber#raise, Thread#kill) cancels its
 *  operation; the process stays waitable.
 */
VALUE
scheduler_process_wait(VALUE self, VALUE vpid, VALUE vflags)
{
    struct uring_scheduler *s = scheduler_get(self);
    int flags = NUM2INT(vflags);
    pid_t pid;
    idtype_t idtype;
    id_t id;
    int options = WEXITED | WNOWAIT;

    if (!NIL_P(cProcessHandle) && rb_obj_is_kind_of(vpid, cProcessHandle)) {
        struct process_wait_args a;

        a.s = s;
        a.fd = rb_io_descriptor(rb_funcall(vpid, id_to_io, 0));
        a.options = waitid_options(flags);
        hook_enter(s, &a.hook, "process_wait", a.fd);
        return rb_ensure(handle_wait, (VALUE)&a, process_wait_leave, (VALUE)&a);
    }
    pid = NUM2PIDT(vpid);
    if (flags & WNOHANG) return status_wait(vpid, flags);
#if defined(HAVE_RB_PROCESS_STATUS_FOR) && defined(SYS_pidfd_open)
    if (pid > 0) {
        struct pid_wait_args a;

        a.pid = pid;
        a.w.s = s;
        a.w.options = waitid_options(flags);
        a.w.fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (a.w.fd >= 0) {
            rb_update_max_fd(a.w.fd);
            hook_enter(s, &a.w.hook, "process_wait", -1);
            return rb_ensure(pid_wait, (VALUE)&a, pid_wait_close, (VALUE)&a);
        }
        /* No such process: waitpid(2) reports ECHILD. */
        if (errno == ESRCH) return rb_process_status_for(-1, 0, ECHILD);
        /* No pidfds here (ENOSYS, seccomp), or no descriptor left: by pid. */
    }
#endif
    idtype = pid > 0 ? P_PID : pid == -1 ? P_ALL : P_PGID;
    id = pid > 0 ? (id_t)pid : pid < -1 ? (id_t)-pid : 0;
    options |= waitid_options(flags);
    for (;;) {
        struct uring_op op = {0};
        siginfo_t info;
        VALUE status;

        memset(&info, 0, sizeof(info));
        io_uring_prep_waitid(op_sqe(s, &op), idtype, id, &info, options, 0);
        int32_t result = op_wait(s, &op);

        /* No such child: reported as stock ruby reports it.  Another error
         * (a kernel refusing these options): the blocking wait decides. */
        if (result == -ECHILD) return status_wait(vpid, flags | WNOHANG);
        if (result < 0) return status_wait(vpid, flags);
        /* WNOWAIT left the child waitable, for every waiter: two fibers
         * waiting for any child both see the same one.  The first to
         * reap it gets it; the other finds nothing (nil) and waits on. */
        status = status_wait(vpid, flags | WNOHANG);
        if (!NIL_P(status)) return status;
    }
}

/*
 *  call-seq:
 *    process_open(handle) -> true or false
 *
 *  Adopts every Process::Handle with a pidfd that this scheduler's fibers
 *  create: their waits without a timeout come to #process_wait, which
 *  waits with IORING_OP_WAITID on the pidfd.  Handles without a pidfd
 *  (Process::Handle.race_free? false) are not adopted.
 *
 *  Closing the scheduler does nothing to adopted processes: they are
 *  neither signalled nor reaped, and stay waitable through their handles
 *  (and detached ones are reaped by core).  A fiber waiting for one when
 *  the scheduler closes is resumed as any other is.
 */
static VALUE
scheduler_process_open(VALUE self, VALUE handle)
{
    scheduler_get(self);
    if (NIL_P(cProcessHandle) || !rb_obj_is_kind_of(handle, cProcessHandle)) {
        rb_raise(rb_eTypeError, "wrong argument type %"PRIsVALUE" (expected Process::Handle)", rb_obj_class(handle));
    }
    return RTEST(rb_funcall(handle, rb_intern("race_free?"), 0)) ? Qtrue : Qfalse;
}

void
Init_uring_process(VALUE cScheduler)
{
    id_to_io = rb_intern_const("to_io");
    if (rb_const_defined(rb_mProcess, rb_intern("Handle"))) {
        cProcessHandle = rb_const_get(rb_mProcess, rb_intern("Handle"));
        rb_gc_register_address(&cProcessHandle);
        rb_define_method(cScheduler, "process_open", scheduler_process_open, 1);
    }
    rb_define_method(cScheduler, "process_wait", scheduler_process_wait, 2);
}
