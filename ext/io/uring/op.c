/**********************************************************************

  io/uring/op.c - operations of IO::Uring::Scheduler.

  A struct uring_op lives on the stack of the fiber that waits for it:
  queueing it (op_sqe), waiting for it (op_wait), and, when the fiber
  leaves early, cancelling it and waiting until the kernel lets go of its
  memory.  Also the fibers inside I/O hooks (struct io_hook), which
  IO#close interrupts through #fiber_interrupt (close.c).

**********************************************************************/

#include "uring.h"

static void
op_complete_quietly(struct uring_scheduler *s, struct uring_op *op)
{
    /* the fiber gave up on this operation: nothing to resume */
}

/* Ask the kernel to cancel `op` (in flight) and wait until it is done with
 * it; its completion runs op->complete as usual.  An operation linked
 * behind one still running is not found (-ENOENT) until it starts: the
 * cancellation is repeated until `op` completes. */
void
op_cancel_and_reap(struct uring_scheduler *s, struct uring_op *op)
{
    if (op->inflight && sq_disarm(s, op)) {
        while (op->inflight) wait_completions(s, 0);
        return;
    }
    while (op->inflight) {
        struct uring_op cancel = {0};

        io_uring_prep_cancel(op_sqe(s, &cancel), op, 0);
        cancel.complete = op_complete_quietly;
        while (cancel.inflight ||
               (op->inflight && (cancel.result == 0 || cancel.result == -EALREADY))) {
            wait_completions(s, 0);
        }
    }
}

/* The fiber leaves a wait while `op` is in flight: cancel it and wait until
 * the kernel is done with it (its memory is on this fiber's stack). */
void
op_cancel(struct uring_scheduler *s, struct uring_op *op)
{
    if (!op->inflight) return;
    op->complete = op_complete_quietly;
    op_cancel_and_reap(s, op);
}

/* Remove a pending IORING_OP_TIMEOUT and wait until the kernel lets go. */
void
timer_cancel(struct uring_scheduler *s, struct uring_op *timer)
{
    struct io_uring_sqe *sqe;

    if (!timer->inflight) return;
    sqe = sqe_get(s);
    io_uring_prep_timeout_remove(sqe, (__u64)(uintptr_t)timer, 0);
    io_uring_sqe_set_data(sqe, NULL);
    while (timer->inflight) wait_completions(s, 0);
}

struct op_wait_args {
    struct uring_scheduler *s;
    struct uring_op *op;
};

static VALUE
op_wait_yield(VALUE ptr)
{
    struct op_wait_args *a = (struct op_wait_args *)ptr;

    while (a->op->inflight) {
        suspend(a->s);
    }
    return Qnil;
}

static VALUE
op_wait_ensure(VALUE ptr)
{
    struct op_wait_args *a = (struct op_wait_args *)ptr;

    op_cancel(a->s, a->op);
    return Qnil;
}

/* Suspend the current fiber until `op` (prepared with op_sqe) completes. */
int32_t
op_wait(struct uring_scheduler *s, struct uring_op *op)
{
    struct op_wait_args a = {s, op};

    rb_ensure(op_wait_yield, (VALUE)&a, op_wait_ensure, (VALUE)&a);
    return op->result;
}

/* op_wait for an operation of hook `h`. */
int32_t
hook_wait(struct uring_scheduler *s, struct io_hook *h, struct uring_op *op)
{
    int32_t result;

    h->op = op;
    h->nops = 1;
    result = op_wait(s, op);
    h->op = NULL;
    h->nops = 0;
    hook_check(h);
    return result;
}

/* hook_wait for `op`, whose submission entry `sqe` was taken after
 * sq_reserve(s, 2) when `deadline` is given: a timeout linked to it at the
 * absolute `deadline` goes in the same submission (were the queue to fill
 * between them, the operation would go alone, unlinked).  The operation
 * answers -ECANCELED if the deadline came first. */
int32_t
hook_wait_until(struct uring_scheduler *s, struct io_hook *h, struct uring_op *op,
                struct io_uring_sqe *sqe, const struct __kernel_timespec *deadline)
{
    if (deadline) {
        sqe->flags |= IOSQE_IO_LINK;
        sqe = sqe_get(s);
        io_uring_prep_link_timeout(sqe, (struct __kernel_timespec *)deadline, IORING_TIMEOUT_ABS);
        io_uring_sqe_set_data(sqe, NULL);
        op->deadline = deadline;
    }
    return hook_wait(s, h, op);
}

/* Block the hook's fiber until `fd` is ready for `mask` (a descriptor
 * that answered EAGAIN), or until `deadline` (absolute; NULL: none).
 * Returns the poll's result: the ready events, -ECANCELED at the
 * deadline, or a negated errno. */
int32_t
hook_poll(struct uring_scheduler *s, struct io_hook *h, int fd, int mask,
          const struct __kernel_timespec *deadline)
{
    struct uring_op op = {0};
    struct io_uring_sqe *sqe;

    if (deadline) sq_reserve(s, 2);
    hook_check(h);
    sqe = op_sqe(s, &op);
    io_uring_prep_poll_add(sqe, fd, mask);
    return hook_wait_until(s, h, &op, sqe, deadline);
}
