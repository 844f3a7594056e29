/**********************************************************************

  io/uring/process.c - process hooks of IO::Uring::Scheduler.

  #process_wait (IORING_OP_WAITID, then a reap by Process::Status.wait)
  and #process_fork (a forked child's new scheduler).

**********************************************************************/

#include "uring.h"

#include <sys/wait.h>

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

/*
 *  call-seq: process_wait(pid, flags) -> Process::Status or nil
 *
 *  Waits with IORING_OP_WAITID until a child that +pid+ designates (as
 *  for waitpid(2): a pid, -1 for any child, 0 or -pgid for a process
 *  group) can be reaped, leaving it waitable (WNOWAIT), then reaps with
 *  the same +pid+ and WNOHANG through Process::Status.wait, which builds
 *  the status.  When another waiter (a fiber, a thread) reaped that child
 *  first, it waits again.  With WNOHANG in +flags+, it only reaps.
 */
VALUE
scheduler_process_wait(VALUE self, VALUE vpid, VALUE vflags)
{
    struct uring_scheduler *s = scheduler_get(self);
    pid_t pid = NUM2PIDT(vpid);
    int flags = NUM2INT(vflags);
    idtype_t idtype = pid > 0 ? P_PID : pid == -1 ? P_ALL : P_PGID;
    id_t id = pid > 0 ? (id_t)pid : pid < -1 ? (id_t)-pid : 0;
    int options = WEXITED | WNOWAIT;

    if (flags & WNOHANG) return status_wait(vpid, flags);
    if (flags & WUNTRACED) options |= WSTOPPED;
#ifdef WCONTINUED
    if (flags & WCONTINUED) options |= WCONTINUED;
#endif
    for (;;) {
        struct uring_op op = {0};
        siginfo_t info;
        VALUE status;

        memset(&info, 0, sizeof(info));
        io_uring_prep_waitid(op_sqe(s, &op), idtype, id, &info, options, 0);
        /* An error (ECHILD, EINVAL) is reported by waitpid(2) as stock
         * ruby reports it. */
        if (op_wait(s, &op) < 0) return status_wait(vpid, flags);
        /* WNOWAIT left the child waitable, for every waiter: two fibers
         * waiting for any child both see the same one.  The first to
         * reap it gets it; the other finds nothing (nil) and waits on. */
        status = status_wait(vpid, flags | WNOHANG);
        if (!NIL_P(status)) return status;
    }
}
