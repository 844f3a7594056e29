#ifndef INTERNAL_IO_URING_H                              /*-*-C-*-vi:se ft=c:*/
#define INTERNAL_IO_URING_H
/**
 * @brief      A per-thread io_uring for CRuby's own blocking operations.
 *
 * Core code that can do an operation through io_uring (a chain of splices
 * in IO.copy_stream, a close) takes the calling thread's ring with
 * rb_io_uring_get(), takes submission entries with rb_io_uring_sqe(),
 * prepares them with liburing's io_uring_prep_*(), waits for them with
 * rb_io_uring_wait(), which releases the GVL while the kernel works, and
 * gives the ring back with rb_io_uring_release().
 *
 * The ring is created on first use in each native thread and released when
 * the thread exits.  Between rb_io_uring_get() and rb_io_uring_release() it
 * is the caller's alone: under M:N threads, where Ruby threads take turns on
 * a native thread, another Ruby thread finds it busy and takes its ordinary
 * path, and the holder may go on using it after moving to another native
 * thread.  A forked child never touches its parent's rings.  When
 * the kernel refuses io_uring (ENOSYS, EPERM as with
 * kernel.io_uring_disabled=2, a seccomp filter, or RUBY_IO_URING=0 in the
 * environment), rb_io_uring_get() returns NULL and the caller takes its
 * ordinary path: io_uring is an accelerator, never a requirement.
 *
 * Built only when configure found liburing (USE_IO_URING); otherwise the
 * functions below are constants and the callers' io_uring paths compile
 * away.
 */
#include "ruby/internal/config.h"
#include <stdbool.h>

#ifndef USE_IO_URING
# define USE_IO_URING 0
#endif

#if USE_IO_URING
#include <liburing.h>

/** One operation in flight; its address is the SQE's user_data. */
struct rb_io_uring_op {
    /** cqe->res once complete: a result, or a negated errno. */
    int result;
    /** cqe->flags once complete. */
    unsigned int flags;
    /** Nonzero once the completion has been reaped. */
    int done;
};

RUBY_SYMBOL_EXPORT_BEGIN
/* io_uring.c (exported for ext/-test-/io_uring) */

/**
 * The calling native thread's ring, created on first use and held by the
 * caller until rb_io_uring_release(); NULL when io_uring is unavailable, or
 * with errno EBUSY when the ring is held already (by another Ruby thread on
 * this native thread under M:N threads, or by an outer use of this one).
 * The caller may use it from any native thread until it releases it, and
 * must release it on every path (rb_ensure), with nothing in flight.  Must
 * be called with the GVL held.
 */
struct io_uring *rb_io_uring_get(void);

/** Give back a ring from rb_io_uring_get(). */
void rb_io_uring_release(struct io_uring *ring);

/** Whether the running kernel supports the io_uring operation `opcode`. */
bool rb_io_uring_supported_p(int opcode);

/**
 * A submission entry of `ring` for the operation `op`, or NULL when the
 * submission queue is full.  Prepared entries are submitted by the next
 * rb_io_uring_wait() on the ring and must not be abandoned: check for room
 * with io_uring_sq_space_left() before preparing a batch.
 */
struct io_uring_sqe *rb_io_uring_sqe(struct io_uring *ring, struct rb_io_uring_op *op);

/**
 * Submit the prepared entries and wait until the `count` operations of `ops`
 * have completed; the GVL is released while waiting.
 *
 * Returns 0 once every operation has completed.  Returns -EINTR when the
 * thread was interrupted (Thread#raise, Thread#kill, a signal trap, a timer
 * interrupt): the operations still in flight have then been cancelled, and
 * every one of them has completed, so their memory is free again; each
 * op->result says what it did (-ECANCELED if nothing).  The caller must then
 * deal with the interrupt (rb_thread_check_ints()) before it retries.
 * Returns another negated errno if the ring itself failed, after waiting for
 * what was in flight; the caller should release the ring, which is torn
 * down, and fall back to its ordinary path.
 */
int rb_io_uring_wait(struct io_uring *ring, struct rb_io_uring_op *ops, int count);
RUBY_SYMBOL_EXPORT_END

#else /* !USE_IO_URING */

struct io_uring;
#define rb_io_uring_get() ((struct io_uring *)NULL)
#define rb_io_uring_release(ring) ((void)0)
#define rb_io_uring_supported_p(opcode) false

#endif /* USE_IO_URING */
#endif /* INTERNAL_IO_URING_H */
