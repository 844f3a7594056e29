/**********************************************************************

  io/uring/uring.h - what the files of IO::Uring::Scheduler share.

  Private to the extension: everything declared here is hidden, and
  Init_uring (scheduler.c) is the only symbol the extension exports.

  The files, one concern each:

    scheduler.c  the class: its data, the ring's setup and release, the
                 owning thread, forked children, Init_uring
    loop.c       the event loop: the ready queue, submission and reaping,
                 wake-ups from other threads, the loop fiber (#run,
                 #close, #fiber)
    op.c         operations (struct uring_op): queueing, waiting,
                 cancelling and reaping; fibers in I/O hooks
                 (struct io_hook)
    io.c         stream I/O: #io_wait, #io_read, #io_write, #io_pread,
                 #io_pwrite, #io_select
    inline.c     inline completion: reads and writes the kernel can
                 answer at once, without the ring
    splice.c     #io_splice and its pool of pipes
    socket.c     #socket_recv, #socket_send, #socket_connect,
                 #socket_accept, #socket_shutdown
    buffers.c    registered buffers: #io_buffer_register,
                 #io_buffer_unregister, #io_buffer_stats
    pbuf.c       reads into buffers the kernel picks from a pool:
                 #read_pooled, #read_pool, #read_pool_stats
    close.c      #io_close and #fiber_interrupt
    process.c    #process_wait and #process_fork
    time.c       deadlines, #kernel_sleep, #timeout_after, #block and
                 #unblock
    lib/uring/scheduler.rb
                 the worker pool: #blocking_operation_wait and
                 #address_resolve

**********************************************************************/

#ifndef IO_URING_SCHEDULER_H
#define IO_URING_SCHEDULER_H

#include "ruby/ruby.h"
#include "ruby/io.h"
#include "ruby/io/buffer.h"
#include "ruby/thread.h"
#include "ruby/fiber/scheduler.h"

#include <liburing.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

struct uring_scheduler;

/* A pipe of #io_splice.  The scheduler owns every one it made, in use or
 * idle, and closes them all with its ring. */
struct splice_pipe {
    int fds[2];
    unsigned int capacity;
    int busy;
};

#define SPLICE_PIPE_SIZE (1 << 20)  /* asked for; the default pipe-max-size */
#define SPLICE_CHUNKS 2             /* pipes in flight in one #io_splice */
#define SPLICE_POOL 8               /* idle pipes kept */
#define SPLICE_FILE_PAIRS 64        /* #io_splice calls with fixed files */

/* One operation in flight, on the waiting fiber's stack. */
struct uring_op {
    VALUE fiber;
    int32_t result;
    int inflight;               /* submitted (or queued) and not reaped */
    /* What to do on completion; NULL: make the fiber ready. */
    void (*complete)(struct uring_scheduler *, struct uring_op *);
    void *arg;                  /* for complete */
    struct uring_op *prev, *next;   /* the scheduler's in-flight list */
    /* For a debugger: what the operation is, recorded when it is
     * submitted (IORING_OP_*, and its descriptor or -1). */
    uint8_t opcode;
    int fd;
    /* For a debugger: when a timeout expires (CLOCK_MONOTONIC, absolute),
     * or the deadline of a timeout linked to the operation; NULL: none. */
    const struct __kernel_timespec *deadline;
    /* Must run even when its fiber leaves (a close): not disarmed. */
    int keep;
    uint32_t cqe_flags;         /* the completion's flags (IORING_CQE_F_*) */
};

/* A fiber inside an I/O hook (io_wait, io_read, ...), on its stack: what
 * #fiber_interrupt looks for when IO#close interrupts it. */
struct io_hook {
    VALUE fiber;
    VALUE interrupt;            /* the exception to raise, or Qnil */
    struct uring_op *op;        /* the operations it waits for ... */
    int nops;                   /* ... (an array), or 0 */
    struct io_hook *prev, *next;    /* the scheduler's list of hooks */
    /* For a debugger: the hook ("io_read", ...) and its descriptor. */
    const char *name;
    int fd;
};

enum io_direction { IO_READ, IO_WRITE };

/* What inline.c notes about a descriptor. */
enum fd_kind { FD_KIND_UNKNOWN, FD_KIND_FILE, FD_KIND_OTHER };
struct fd_hint {
    unsigned char kind;         /* enum fd_kind */
    unsigned char miss[2];      /* per direction: 0 (try RWF_NOWAIT), or 0xff (the ring) */
};

/* inline_transfer(): not done, the ring's to do. */
#define INLINE_RING ((ssize_t)-(1 << 30))

/* A registered IO::Buffer: one slot of the ring's buffer table. */
struct fixed_buffer {
    VALUE buffer;               /* 0: the slot is empty */
    char *base;
    size_t size;
};

/* A fiber to resume, or to raise an exception in (timeout_after). */
struct ready_entry {
    VALUE fiber;
    VALUE klass;                /* Qnil, or the exception class to raise */
    VALUE message;
    const void *token;          /* the timeout_after that raises, or NULL */
};

struct uring_scheduler {
    struct io_uring ring;
    int ring_live;
    unsigned long generation;
    VALUE thread;
    VALUE loop_fiber;           /* runs #run; waiting fibers transfer to it */
    int closed;
    int draining;               /* being freed: completions resume nothing */

    struct uring_op inflight_ops;   /* list head of operations in flight */
    long inflight;

    struct io_hook hooks;       /* list head of fibers in I/O hooks */
    int interrupts_pending;     /* #fiber_interrupt from another thread */
    long interrupted;           /* hooks with an interrupt (see sq_note) */

    struct ready_entry *ready;
    long ready_head, ready_len, ready_capa;

    /* Raises of timeout_after held back until their fiber next enters a
     * hook (see run_once). */
    struct ready_entry *held;
    long held_len, held_capa;

    st_table *blocked;          /* fiber => struct block_wait * */
    st_table *woken;            /* fibers unblocked before they blocked */

    int wake_fd;                /* eventfd: wakes the loop from other threads */
    uint64_t wake_value;
    struct uring_op wake_op;

    struct splice_pipe *pipes;  /* the pipes of #io_splice */
    int npipes, pipes_capa;

    /* Pairs of slots of the ring's registered-file table, one pair per
     * #io_splice in progress (see splice_files_take): the free ones. */
    int file_free[SPLICE_FILE_PAIRS];
    int file_nfree;
    unsigned long file_epoch;   /* bumped when the table is emptied */

    /* buffers.c */
    struct fixed_buffer *fixed; /* FIXED_SLOTS slots, once the ring has a table */
    int nfixed;                 /* slots in use ... */
    int fixed_high;             /* ... all below this one */
    int fixed_state;            /* 0: no table yet; -1: a table; > 0: the errno that refused it */
    unsigned long fixed_ops;    /* operations made with READ_FIXED/WRITE_FIXED */
    unsigned long fixed_refusals;

    /* pbuf.c: the pool of #read_pooled, or NULL */
    struct pbuf_pool *pbuf;

    /* inline.c */
    struct fd_hint *hints;      /* indexed by descriptor */
    int nhints;
    unsigned long inline_count; /* inline operations since the loop's last turn */
    long long inline_since;     /* and when the first of them was made (ns) */
};

/* Memory liburing maps with raw system calls (the rings, a provided-buffer
 * ring) is not seen by AddressSanitizer's mmap interceptor: the address
 * range keeps whatever shadow it had, and CRuby poisons GC heap pages it
 * later unmaps, so a ring mapped there would read as poisoned.  Under ASan,
 * each such mapping is unpoisoned once mapped. */
#if defined(__SANITIZE_ADDRESS__)
# include <sanitizer/asan_interface.h>
# define URING_ASAN_UNPOISON(ptr, size) __asan_unpoison_memory_region((ptr), (size))
#elif defined(__has_feature)
# if __has_feature(address_sanitizer)
#  include <sanitizer/asan_interface.h>
#  define URING_ASAN_UNPOISON(ptr, size) __asan_unpoison_memory_region((ptr), (size))
# endif
#endif
#ifndef URING_ASAN_UNPOISON
# define URING_ASAN_UNPOISON(ptr, size) ((void)(ptr), (void)(size))
#endif

#pragma GCC visibility push(hidden)

/* scheduler.c */
extern const rb_data_type_t scheduler_type;
extern VALUE cFiber, cProcessStatus;
/* Bumped in every forked child: a scheduler made before the fork must not
 * touch its ring, whose queues it shares with the parent. */
extern volatile unsigned long fork_generation;
struct uring_scheduler *scheduler_get(VALUE self);
void ring_release(struct uring_scheduler *s);
void scheduler_after_fork(struct uring_scheduler *s);
void scheduler_forget_parent(struct uring_scheduler *s);

/* loop.c */
void ready_push(struct uring_scheduler *s, VALUE fiber);
void ready_push_raise(struct uring_scheduler *s, VALUE fiber, VALUE klass, VALUE message, const void *token);
void ready_drop_raise(struct uring_scheduler *s, const void *token);
struct io_uring_sqe *sqe_get_slow(struct uring_scheduler *s);
void sq_note(struct uring_scheduler *s);
int sq_disarm(struct uring_scheduler *s, struct uring_op *op);
void sq_reserve(struct uring_scheduler *s, unsigned int n);
void reap(struct uring_scheduler *s);
NORETURN(void ring_fail(struct uring_scheduler *s, int error, const char *call));
void wake_ubf(void *ptr);
void wait_completions(struct uring_scheduler *s, int interruptible);
void suspend(struct uring_scheduler *s);
VALUE scheduler_run(VALUE self);
VALUE scheduler_run_m(VALUE self);
VALUE scheduler_close(VALUE self);
VALUE scheduler_closed_p(VALUE self);
VALUE scheduler_fiber(int argc, VALUE *argv, VALUE self);

/* op.c */
int32_t op_wait(struct uring_scheduler *s, struct uring_op *op);
void op_cancel(struct uring_scheduler *s, struct uring_op *op);
void op_cancel_and_reap(struct uring_scheduler *s, struct uring_op *op);
void timer_cancel(struct uring_scheduler *s, struct uring_op *timer);
int32_t hook_wait(struct uring_scheduler *s, struct io_hook *h, struct uring_op *op);
int32_t hook_wait_until(struct uring_scheduler *s, struct io_hook *h, struct uring_op *op,
                        struct io_uring_sqe *sqe, const struct __kernel_timespec *deadline);
int32_t hook_poll(struct uring_scheduler *s, struct io_hook *h, int fd, int mask,
                  const struct __kernel_timespec *deadline);

/* io.c */
VALUE scheduler_io_wait(VALUE self, VALUE io, VALUE events, VALUE timeout);
VALUE scheduler_io_read(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset);
VALUE scheduler_io_write(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset);
VALUE scheduler_io_pread(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset);
VALUE scheduler_io_pwrite(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset);
VALUE scheduler_io_select(int argc, VALUE *argv, VALUE self);

/* inline.c */
ssize_t inline_transfer(struct uring_scheduler *s, int fd, int socket, enum io_direction dir,
                        void *p, size_t n, off_t at);
void inline_forget(struct uring_scheduler *s, int fd);

/* splice.c */
void pipes_release(struct uring_scheduler *s);
void splice_files_setup(struct uring_scheduler *s);
void splice_files_drop(struct uring_scheduler *s);
VALUE scheduler_io_splice(VALUE self, VALUE from, VALUE from_offset, VALUE to, VALUE to_offset, VALUE length);

/* socket.c */
void Init_uring_socket(VALUE cScheduler);

/* buffers.c */
void Init_uring_buffers(VALUE cScheduler);
void fixed_release(struct uring_scheduler *s, int ring);

/* pbuf.c */
void Init_uring_pbuf(VALUE cScheduler);
void pbuf_release(struct uring_scheduler *s);

/* close.c */
void hooks_cancel_interrupted(struct uring_scheduler *s);
VALUE scheduler_io_close(VALUE self, VALUE fd);
VALUE scheduler_fiber_interrupt(VALUE self, VALUE fiber, VALUE exception);

/* process.c */
void Init_uring_process(VALUE cScheduler);
VALUE scheduler_process_fork(VALUE self);

/* time.c */
struct __kernel_timespec deadline_of(VALUE duration);
VALUE scheduler_kernel_sleep(int argc, VALUE *argv, VALUE self);
VALUE scheduler_timeout_after(VALUE self, VALUE duration, VALUE klass, VALUE message);
VALUE scheduler_block(int argc, VALUE *argv, VALUE self);
VALUE scheduler_unblock(VALUE self, VALUE blocker, VALUE fiber);

#pragma GCC visibility pop

/* The hot path of every hook, inlined where it is used. */

/* A free submission entry; when the queue is full, what is queued is
 * submitted first. */
static inline struct io_uring_sqe *
sqe_get(struct uring_scheduler *s)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    return sqe ? sqe : sqe_get_slow(s);
}

/* A submission entry for `op`, whose fiber is the current one. */
static inline struct io_uring_sqe *
op_sqe(struct uring_scheduler *s, struct uring_op *op)
{
    struct io_uring_sqe *sqe = sqe_get(s);

    op->fiber = rb_fiber_current();
    op->result = 0;
    op->inflight = 1;
    op->opcode = IORING_OP_NOP;     /* until sq_note() */
    op->fd = -1;
    op->deadline = NULL;
    op->keep = 0;
    op->cqe_flags = 0;
    op->next = &s->inflight_ops;
    op->prev = s->inflight_ops.prev;
    s->inflight_ops.prev->next = op;
    s->inflight_ops.prev = op;
    s->inflight++;
    io_uring_sqe_set_data(sqe, op);
    return sqe;
}

/* The current fiber enters hook `name` working on descriptor `fd`. */
static inline void
hook_enter(struct uring_scheduler *s, struct io_hook *h, const char *name, int fd)
{
    h->name = name;
    h->fd = fd;
    h->fiber = rb_fiber_current();
    h->interrupt = Qnil;
    h->op = NULL;
    h->nops = 0;
    h->next = &s->hooks;
    h->prev = s->hooks.prev;
    s->hooks.prev->next = h;
    s->hooks.prev = h;
}

static inline void
hook_leave(struct uring_scheduler *s, struct io_hook *h)
{
    if (!NIL_P(h->interrupt)) s->interrupted--;
    h->prev->next = h->next;
    h->next->prev = h->prev;
    h->prev = h->next = h;
}

/* The slot of the registered buffer that holds the `n` bytes at `p`, or
 * -1. */
static inline int
fixed_slot(const struct uring_scheduler *s, const char *p, size_t n)
{
    uintptr_t at = (uintptr_t)p;
    int i;

    if (s->nfixed == 0) return -1;
    for (i = 0; i < s->fixed_high; i++) {
        const struct fixed_buffer *f = &s->fixed[i];
        uintptr_t base = (uintptr_t)f->base;

        if (f->buffer && at >= base && n <= f->size && at - base <= f->size - n) return i;
    }
    return -1;
}

/* Lock `buffer` while the kernel may use its memory; returns whether the
 * caller must unlock it afterwards.  Where locks are counted
 * (RB_IO_BUFFER_LOCKS_COUNTED), the hook takes a lock of its own, which no
 * other holder's unlock can release under it.  Otherwise a buffer holds
 * one lock: the wrappers of IO#read and IO#write come locked, and are
 * left so. */
static inline int
uring_buffer_lock(VALUE buffer)
{
#ifdef RB_IO_BUFFER_LOCKS_COUNTED
    rb_io_buffer_lock(buffer);
    return 1;
#else
    int was_locked = rb_io_buffer_try_unlock(buffer);

    rb_io_buffer_lock(buffer);
    return !was_locked;
#endif
}

/* Raise what #fiber_interrupt left for this hook: call before starting an
 * operation on the descriptor, and after each one. */
static inline void
hook_check(struct io_hook *h)
{
    if (!NIL_P(h->interrupt)) rb_exc_raise(h->interrupt);
}

#endif /* IO_URING_SCHEDULER_H */
