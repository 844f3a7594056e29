/**********************************************************************

  io/uring/close.c - #io_close and #fiber_interrupt of
                     IO::Uring::Scheduler.

  #io_close closes with IORING_OP_CLOSE; #fiber_interrupt makes a fiber's
  I/O hook raise, cancelling its operations (at once on the scheduler's
  thread, through the loop from another thread).

**********************************************************************/

#include "uring.h"

#include <fcntl.h>
#include <unistd.h>

/* Cancel the operation of an interrupted hook and wait until the kernel is
 * done with it (its completion makes the fiber ready, and the fiber then
 * raises the interrupt).  On the scheduler's thread only. */
static void
hook_cancel(struct uring_scheduler *s, struct io_hook *h)
{
    int i;

    for (i = 0; i < h->nops; i++) {
        if (h->op[i].inflight) op_cancel_and_reap(s, &h->op[i]);
    }
}

/* Cancel for the interrupts other threads asked for. */
void
hooks_cancel_interrupted(struct uring_scheduler *s)
{
    struct io_hook *h;

    s->interrupts_pending = 0;
    for (h = s->hooks.next; h != &s->hooks; h = h->next) {
        if (!NIL_P(h->interrupt)) hook_cancel(s, h);
    }
}

/*
 *  call-seq: io_close(fd) -> true or -errno
 *
 *  Closes the descriptor +fd+ with IORING_OP_CLOSE, the fiber waiting for
 *  the result, which is returned as IO#close expects: true, or a negated
 *  errno.  Also when the wait is interrupted, the close has completed
 *  before the exception propagates: the descriptor is never left open.
 */
VALUE
scheduler_io_close(VALUE self, VALUE fd)
{
    struct uring_scheduler *s = scheduler_get(self);
    int descriptor = NUM2INT(fd);
    struct uring_op op = {0};
    int32_t result;

    inline_forget(s, descriptor);
    io_uring_prep_close(op_sqe(s, &op), descriptor);
    op.keep = 1;                /* closed, whatever the fiber is raised */
    result = op_wait(s, &op);
    /* IORING_OP_CLOSE refuses some descriptors that close(2) takes (those
     * of io_uring instances): still open, they are closed the usual way. */
    if (result == -EBADF && fcntl(descriptor, F_GETFD) >= 0) {
        result = close(descriptor) < 0 && errno != EINTR ? -errno : 0;
    }
    return result < 0 ? INT2NUM(result) : Qtrue;
}

/*
 *  call-seq: fiber_interrupt(fiber, exception) -> nil
 *
 *  Makes the I/O hook +fiber+ is in (io_wait, io_read, io_write, io_pread,
 *  io_pwrite, io_splice) raise +exception+: IO#close calls it for the fibers using the
 *  descriptor it closes.  On the scheduler's thread the operation in
 *  flight is cancelled and reaped before this returns, so the kernel is
 *  done with the descriptor; from another thread the scheduler's thread is
 *  woken to do so.  A fiber in no I/O hook is left alone.
 */
VALUE
scheduler_fiber_interrupt(VALUE self, VALUE fiber, VALUE exception)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    struct io_hook *h;

    /* raised later by the fiber's hook: refused now, as Fiber#raise would */
    if (!rb_respond_to(exception, rb_intern("exception"))) {
        rb_raise(rb_eTypeError, "exception class/object expected");
    }
    if (s->closed || !s->ring_live) return Qnil;
    if (s->generation != fork_generation) {
        scheduler_after_fork(s);    /* the parent's fibers are not ours */
        return Qnil;
    }
    for (h = s->hooks.next; h != &s->hooks; h = h->next) {
        if (h->fiber != fiber) continue;
        if (NIL_P(h->interrupt)) {
            h->interrupt = exception;
            s->interrupted++;
        }
        if (s->thread == rb_thread_current()) {
            hook_cancel(s, h);
        }
        else {
            s->interrupts_pending = 1;
            wake_ubf(s);
        }
    }
    return Qnil;
}
