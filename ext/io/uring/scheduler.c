/**********************************************************************

  io/uring/scheduler.c - IO::Uring::Scheduler, a Fiber::Scheduler on
                         io_uring(7).

  One ring per scheduler, one scheduler per thread.  A fiber that would
  block queues the operation itself (a read, a write, a poll, a timeout,
  a waitid) and transfers to the loop fiber (the fiber that first used the
  scheduler, normally the thread's root fiber); the event loop (#run)
  transfers to the fibers that are ready, then submits everything they
  queued with one io_uring_enter(2) and waits for completions with the GVL
  released.

  An operation's state (struct uring_op) lives on the C stack of the fiber
  that waits for it, which stays put while the fiber is suspended: the hot
  path allocates nothing.  A fiber that leaves a wait early (an exception
  from Fiber#raise, Thread#raise or a timeout) cancels its operation and
  waits for the kernel to let go of it before its stack frame and buffer go.

  IO#close: a fiber inside an I/O hook is on the scheduler's list of hooks;
  #fiber_interrupt marks it, cancels its operation (reaped before the call
  returns on the scheduler's thread) and the hook raises the IOError it was
  given.  #io_close closes the descriptor with IORING_OP_CLOSE.

**********************************************************************/

#include "ruby/ruby.h"
#include "ruby/io.h"
#include "ruby/io/buffer.h"
#include "ruby/thread.h"
#include "ruby/fiber/scheduler.h"

#include <liburing.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING_ENTRIES 1024
#define COMPLETION_ENTRIES 16384

static VALUE cScheduler;
static ID id_wait, id_locked_p;
static VALUE cProcessStatus, cFiber;

/* Ruby threads run on M:N native threads (RUBY_MN_THREADS=1): see
 * ring_setup. */
static int mn_threads;

/* Bumped in every forked child: a scheduler made before the fork must not
 * touch its ring, whose queues it shares with the parent. */
static volatile unsigned long fork_generation;

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

/* One operation in flight, on the waiting fiber's stack. */
struct uring_op {
    VALUE fiber;
    int32_t result;
    int inflight;               /* submitted (or queued) and not reaped */
    /* What to do on completion; NULL: make the fiber ready. */
    void (*complete)(struct uring_scheduler *, struct uring_op *);
    void *arg;                  /* for complete */
    struct uring_op *prev, *next;   /* the scheduler's in-flight list */
};

/* A fiber inside an I/O hook (io_wait, io_read, ...), on its stack: what
 * #fiber_interrupt looks for when IO#close interrupts it. */
struct io_hook {
    VALUE fiber;
    VALUE interrupt;            /* the exception to raise, or Qnil */
    struct uring_op *op;        /* the operations it waits for ... */
    int nops;                   /* ... (an array), or 0 */
    struct io_hook *prev, *next;    /* the scheduler's list of hooks */
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
};

static void reap(struct uring_scheduler *s);
static void held_raise(struct uring_scheduler *s);
NORETURN(static void ring_fail(struct uring_scheduler *s, int error, const char *call));

/* ------------------------------------------------------------------ */

static void
scheduler_mark(void *ptr)
{
    struct uring_scheduler *s = ptr;
    struct uring_op *op;
    long i;

    rb_gc_mark(s->thread);
    rb_gc_mark(s->loop_fiber);
    /* Fibers with operations in flight: the kernel writes to their stacks. */
    for (op = s->inflight_ops.next; op && op != &s->inflight_ops; op = op->next) {
        rb_gc_mark(op->fiber);
    }
    for (struct io_hook *h = s->hooks.next; h && h != &s->hooks; h = h->next) {
        rb_gc_mark(h->interrupt);
    }
    for (i = 0; i < s->ready_len; i++) {
        struct ready_entry *e = &s->ready[(s->ready_head + i) % s->ready_capa];
        rb_gc_mark(e->fiber);
        rb_gc_mark(e->klass);
        rb_gc_mark(e->message);
    }
    for (i = 0; i < s->held_len; i++) {
        rb_gc_mark(s->held[i].fiber);
        rb_gc_mark(s->held[i].klass);
        rb_gc_mark(s->held[i].message);
    }
    if (s->blocked) rb_mark_set(s->blocked);
    if (s->woken) rb_mark_set(s->woken);
}

static void
pipes_release(struct uring_scheduler *s)
{
    /* Also those of fibers that will never resume (a killed thread):
     * their pipe_give() finds nothing and closes nothing. */
    while (s->npipes > 0) {
        struct splice_pipe *p = &s->pipes[--s->npipes];
        close(p->fds[0]);
        close(p->fds[1]);
    }
}

static void
ring_release(struct uring_scheduler *s)
{
    pipes_release(s);
    if (s->ring_live) {
        io_uring_queue_exit(&s->ring);
        s->ring_live = 0;
    }
    if (s->wake_fd >= 0) {
        close(s->wake_fd);
        s->wake_fd = -1;
    }
}

static void
scheduler_free(void *ptr)
{
    struct uring_scheduler *s = ptr;

    /* Operations still in flight (the thread died in the middle of the
     * loop) write to fiber stacks: cancel them and wait, where this thread
     * may submit.  In a forked child the ring is the parent's: it is only
     * unmapped. */
    if (s->ring_live && s->inflight > 0 && s->generation == fork_generation) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
        s->draining = 1;
        if (sqe) {
            io_uring_prep_cancel(sqe, NULL, IORING_ASYNC_CANCEL_ANY);
            io_uring_sqe_set_data(sqe, NULL);
        }
        while (s->inflight > 0) {
            int ret = io_uring_submit_and_wait(&s->ring, 1);
            if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) break;
            reap(s);
        }
    }
    ring_release(s);
    if (s->blocked) st_free_table(s->blocked);
    if (s->woken) st_free_table(s->woken);
    ruby_xfree(s->ready);
    ruby_xfree(s->held);
    ruby_xfree(s->pipes);
    ruby_xfree(s);
}

static size_t
scheduler_memsize(const void *ptr)
{
    const struct uring_scheduler *s = ptr;
    return sizeof(*s) + s->ready_capa * sizeof(struct ready_entry);
}

static const rb_data_type_t scheduler_type = {
    "IO::Uring::Scheduler",
    {scheduler_mark, scheduler_free, scheduler_memsize,},
    0, 0, RUBY_TYPED_FREE_IMMEDIATELY
};

static VALUE
scheduler_alloc(VALUE klass)
{
    struct uring_scheduler *s;
    VALUE obj = TypedData_Make_Struct(klass, struct uring_scheduler, &scheduler_type, s);

    s->thread = Qnil;
    s->loop_fiber = Qnil;
    s->wake_fd = -1;
    s->inflight_ops.next = s->inflight_ops.prev = &s->inflight_ops;
    s->hooks.next = s->hooks.prev = &s->hooks;
    return obj;
}

static void
ring_setup(struct uring_scheduler *s)
{
    struct io_uring_params params;
    int ret;

    /* Only the scheduler's thread submits, and it reaps completions only
     * when it waits: the kernel can skip what sharing would need.  The
     * ring starts disabled and is enabled by the thread that first uses
     * the scheduler (scheduler_bind), which becomes its single issuer. */
    memset(&params, 0, sizeof(params));
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_R_DISABLED |
                   IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    params.cq_entries = COMPLETION_ENTRIES;
    /* With M:N threads a Ruby thread moves between native threads, and a
     * single-issuer ring refuses (EEXIST) every other one. */
    ret = mn_threads ? -EINVAL : io_uring_queue_init_params(RING_ENTRIES, &s->ring, &params);
    if (ret == -EINVAL) {       /* kernels before 6.1, or M:N threads */
        memset(&params, 0, sizeof(params));
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_R_DISABLED;
        params.cq_entries = COMPLETION_ENTRIES;
        ret = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &params);
    }
    if (ret < 0) rb_syserr_fail(-ret, "io_uring_queue_init_params");
    s->ring_live = 1;

    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        int e = errno;
        ring_release(s);
        rb_syserr_fail(e, "eventfd");
    }
    s->generation = fork_generation;
}

/* The first thread to use the scheduler owns it; the fiber it runs in then
 * (normally the thread's root fiber, which sets the scheduler) runs the
 * loop. */
static void
scheduler_bind(struct uring_scheduler *s)
{
    int ret = io_uring_enable_rings(&s->ring);

    if (ret < 0) rb_syserr_fail(-ret, "io_uring_enable_rings");
    s->thread = rb_thread_current();
    s->loop_fiber = rb_fiber_current();
}

/*
 *  call-seq: IO::Uring::Scheduler.new -> scheduler
 *
 *  A scheduler with its own io_uring.  It belongs to the thread that first
 *  uses it (normally through Fiber.set_scheduler).  Raises a
 *  SystemCallError (Errno::EPERM, Errno::ENOSYS, ...) when the kernel
 *  refuses io_uring.
 */
static VALUE
scheduler_initialize(VALUE self)
{
    struct uring_scheduler *s = RTYPEDDATA_GET_DATA(self);

    if (s->ring_live) rb_raise(rb_eRuntimeError, "already initialized");
    s->blocked = st_init_numtable();
    s->woken = st_init_numtable();
    s->ready_capa = 64;
    s->ready = ALLOC_N(struct ready_entry, s->ready_capa);
    s->pipes_capa = SPLICE_POOL;
    s->pipes = ALLOC_N(struct splice_pipe, s->pipes_capa);
    ring_setup(s);
    return self;
}

/* In a forked child: forget the parent's ring and fibers without touching
 * them (the ring's queues are shared with the parent: only unmapped). */
static void
scheduler_forget_parent(struct uring_scheduler *s)
{
    s->ring_live = 0;           /* the mapping goes with munmap below */
    io_uring_queue_exit(&s->ring);
    close(s->wake_fd);
    s->wake_fd = -1;
    pipes_release(s);           /* the child's copies of the descriptors */
    s->inflight_ops.next = s->inflight_ops.prev = &s->inflight_ops;
    s->inflight = 0;
    s->hooks.next = s->hooks.prev = &s->hooks;
    s->interrupts_pending = 0;
    s->wake_op.inflight = 0;
    s->ready_head = s->ready_len = 0;
    s->held_len = 0;
    st_clear(s->blocked);
    st_clear(s->woken);
}

/* A scheduler used in a forked child without #process_fork (a ruby without
 * the hook): start over with a ring of our own. */
static void
scheduler_after_fork(struct uring_scheduler *s)
{
    scheduler_forget_parent(s);
    ring_setup(s);
    scheduler_bind(s);
}

static struct uring_scheduler *
scheduler_get(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (s->closed) rb_raise(rb_eRuntimeError, "IO::Uring::Scheduler is closed");
    if (!s->ring_live) rb_raise(rb_eRuntimeError, "IO::Uring::Scheduler is not initialized");
    if (s->generation != fork_generation) scheduler_after_fork(s);
    if (NIL_P(s->thread)) scheduler_bind(s);
    if (s->thread != rb_thread_current()) {
        rb_raise(rb_eThreadError, "IO::Uring::Scheduler belongs to another thread");
    }
    if (s->held_len > 0) held_raise(s);
    return s;
}

/* ------------------------------------------------------------------ */
/* The ready queue */

static void
ready_push_raise(struct uring_scheduler *s, VALUE fiber, VALUE klass, VALUE message, const void *token)
{
    struct ready_entry *e;

    if (s->ready_len == s->ready_capa) {
        long capa = s->ready_capa * 2, i;
        struct ready_entry *q = ALLOC_N(struct ready_entry, capa);

        for (i = 0; i < s->ready_len; i++) {
            q[i] = s->ready[(s->ready_head + i) % s->ready_capa];
        }
        ruby_xfree(s->ready);
        s->ready = q;
        s->ready_capa = capa;
        s->ready_head = 0;
    }
    e = &s->ready[(s->ready_head + s->ready_len) % s->ready_capa];
    e->fiber = fiber;
    e->klass = klass;
    e->message = message;
    e->token = token;
    s->ready_len++;
}

static void
ready_push(struct uring_scheduler *s, VALUE fiber)
{
    ready_push_raise(s, fiber, Qnil, Qnil, NULL);
}

static struct ready_entry
ready_shift(struct uring_scheduler *s)
{
    struct ready_entry e = s->ready[s->ready_head];

    s->ready_head = (s->ready_head + 1) % s->ready_capa;
    s->ready_len--;
    return e;
}

/* Forget the pending exception of the timeout_after `token` (it ended):
 * only its own, an enclosing timeout_after's still has to fire. */
static void
ready_drop_raise(struct uring_scheduler *s, const void *token)
{
    long i;

    for (i = 0; i < s->held_len; i++) {
        if (s->held[i].token == token) {
            s->held[i] = s->held[--s->held_len];
            break;
        }
    }
    for (i = 0; i < s->ready_len; i++) {
        struct ready_entry *e = &s->ready[(s->ready_head + i) % s->ready_capa];
        if (e->token == token && !NIL_P(e->klass)) {
            e->fiber = Qnil;    /* skipped by the loop */
            e->klass = e->message = Qnil;
            e->token = NULL;
        }
    }
}

/* Hold back the raise `e` until its fiber next enters a hook. */
static void
held_push(struct uring_scheduler *s, struct ready_entry e)
{
    if (s->held_len == s->held_capa) {
        long capa = s->held_capa ? s->held_capa * 2 : 4;
        REALLOC_N(s->held, struct ready_entry, capa);
        s->held_capa = capa;
    }
    s->held[s->held_len++] = e;
}

/* At the start of every hook: raise here what was held back for the
 * current fiber, before anything is queued for it. */
static void
held_raise(struct uring_scheduler *s)
{
    VALUE fiber = rb_fiber_current();
    long i;

    for (i = 0; i < s->held_len; i++) {
        if (s->held[i].fiber == fiber) {
            VALUE args[2] = {s->held[i].klass, s->held[i].message};
            s->held[i] = s->held[--s->held_len];
            rb_exc_raise(rb_make_exception(2, args));
        }
    }
}

/* Whether `fiber` waits in the ready queue to be resumed (not raised in). */
static int
ready_resume_pending_p(struct uring_scheduler *s, VALUE fiber)
{
    long i;

    for (i = 0; i < s->ready_len; i++) {
        struct ready_entry *e = &s->ready[(s->ready_head + i) % s->ready_capa];
        if (e->fiber == fiber && NIL_P(e->klass)) return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Submission and completion */

static struct io_uring_sqe *
sqe_get(struct uring_scheduler *s)
{
    struct io_uring_sqe *sqe;

    while (!(sqe = io_uring_get_sqe(&s->ring))) {
        int ret = io_uring_submit(&s->ring);
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
            ring_fail(s, -ret, "io_uring_submit");
        }
        reap(s);
    }
    return sqe;
}

/* A submission entry for `op`, whose fiber is the current one. */
static struct io_uring_sqe *
op_sqe(struct uring_scheduler *s, struct uring_op *op)
{
    struct io_uring_sqe *sqe = sqe_get(s);

    op->fiber = rb_fiber_current();
    op->result = 0;
    op->inflight = 1;
    op->next = &s->inflight_ops;
    op->prev = s->inflight_ops.prev;
    s->inflight_ops.prev->next = op;
    s->inflight_ops.prev = op;
    s->inflight++;
    io_uring_sqe_set_data(sqe, op);
    return sqe;
}

/* A kernel that meets a signal inside a worker can hand the internal
 * restart codes (ERESTARTSYS and kin, 512-516) to the completion, as
 * IORING_OP_SPLICE does: they mean "interrupted, nothing moved". */
static int
cqe_result(int res)
{
    if (res <= -512 && res >= -516) return -EINTR;
    return res;
}

static void
reap(struct uring_scheduler *s)
{
    struct io_uring_cqe *cqe;
    unsigned int head, seen = 0;

    io_uring_for_each_cqe(&s->ring, head, cqe) {
        struct uring_op *op = io_uring_cqe_get_data(cqe);

        seen++;
        if (!op) continue;              /* a cancellation or link timeout */
        if (op == &s->wake_op) {
            op->inflight = 0;
            continue;
        }
        if (s->draining) {
            /* Being freed: the fibers whose stacks hold the operations may
             * have been freed before in the same sweep.  Only count. */
            s->inflight--;
            continue;
        }
        op->result = cqe_result(cqe->res);
        op->inflight = 0;
        op->prev->next = op->next;
        op->next->prev = op->prev;
        op->prev = op->next = NULL;
        s->inflight--;
        if (op->complete) {
            op->complete(s, op);
        }
        else {
            ready_push(s, op->fiber);
        }
    }
    io_uring_cq_advance(&s->ring, seen);
}

struct enter_args {
    struct uring_scheduler *s;
    int result;
    int called;
};

static void *
enter_nogvl(void *ptr)
{
    struct enter_args *a = ptr;
    a->result = io_uring_submit_and_wait(&a->s->ring, 1);
    return NULL;
}

/* Unblocking function: another thread wants this one back. */
static void
wake_ubf(void *ptr)
{
    struct uring_scheduler *s = ptr;
    uint64_t one = 1;
    if (s->wake_fd >= 0 && write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: a wakeup is pending anyway */
    }
}

/* io_uring_enter(2) failed for good (the ring's descriptor was closed
 * behind our back, say): nothing in flight will complete through this
 * ring.  Forget every operation before raising, so that no list still
 * reaches into the frames the exception unwinds. */
static void
ring_fail(struct uring_scheduler *s, int error, const char *call)
{
    while (s->inflight_ops.next != &s->inflight_ops) {
        struct uring_op *op = s->inflight_ops.next;
        op->prev->next = op->next;
        op->next->prev = op->prev;
        op->prev = op->next = NULL;
        op->inflight = 0;
        op->result = -ECANCELED;
    }
    s->inflight = 0;
    rb_syserr_fail(error, call);
}

static void *
enter_nogvl_called(void *ptr)
{
    struct enter_args *a = ptr;
    enter_nogvl(a);
    a->called = 1;
    return NULL;
}

/* Submit what is queued and wait for at least one completion.
 *
 * `interruptible` (the event loop): Ruby interrupts (Thread#raise,
 * signals) and other threads (#unblock, through the eventfd) get through.
 * Otherwise (waiting for a cancelled operation or a removed timer, whose
 * memory must not go before the kernel lets go of it) nothing ends the
 * wait but a completion.  Both release the GVL: a cancellation the kernel
 * cannot carry out at once (a read stuck in a file system) must not stop
 * every other thread.  Only with an interrupt already pending, which
 * would keep rb_nogvl from calling, does the wait hold the GVL. */
static void
wait_completions(struct uring_scheduler *s, int interruptible)
{
    struct enter_args a = {s, 0, 0};

    if (!interruptible) {
        rb_nogvl(enter_nogvl_called, &a, NULL, NULL, RB_NOGVL_INTR_FAIL);
        if (!a.called) enter_nogvl(&a);
    }
    else {
        if (!s->wake_op.inflight) {
            struct io_uring_sqe *sqe = sqe_get(s);
            io_uring_prep_read(sqe, s->wake_fd, &s->wake_value, sizeof(s->wake_value), 0);
            io_uring_sqe_set_data(sqe, &s->wake_op);
            s->wake_op.inflight = 1;
        }
        rb_thread_call_without_gvl(enter_nogvl, &a, wake_ubf, s);
    }
    if (a.result < 0 && a.result != -EINTR && a.result != -EAGAIN &&
        a.result != -EBUSY && a.result != -ETIME) {
        ring_fail(s, -a.result, "io_uring_enter");
    }
    reap(s);
}

/* Submit what is queued and collect what has completed, without waiting. */
static void
poll_completions(struct uring_scheduler *s)
{
    int ret = io_uring_submit_and_get_events(&s->ring);

    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
        ring_fail(s, -ret, "io_uring_enter");
    }
    reap(s);
}

static void
op_complete_quietly(struct uring_scheduler *s, struct uring_op *op)
{
    /* the fiber gave up on this operation: nothing to resume */
}

/* Ask the kernel to cancel `op` (in flight) and wait until it is done with
 * it; its completion runs op->complete as usual.  An operation linked
 * behind one still running is not found (-ENOENT) until it starts: the
 * cancellation is repeated until `op` completes. */
static void
op_cancel_and_reap(struct uring_scheduler *s, struct uring_op *op)
{
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
static void
op_cancel(struct uring_scheduler *s, struct uring_op *op)
{
    if (!op->inflight) return;
    op->complete = op_complete_quietly;
    op_cancel_and_reap(s, op);
}

static void run_once(struct uring_scheduler *s);

/* Let the loop run until something makes the current fiber ready. */
static void
suspend(struct uring_scheduler *s)
{
    if (rb_fiber_current() == s->loop_fiber) {
        run_once(s);            /* nobody to transfer to: be the loop */
    }
    else {
        rb_fiber_transfer(s->loop_fiber, 0, NULL);
    }
}

/* Room for `n` entries, so that a chain of linked operations is never split
 * across two submissions. */
static void
sq_reserve(struct uring_scheduler *s, unsigned int n)
{
    while (io_uring_sq_space_left(&s->ring) < n) {
        int ret = io_uring_submit(&s->ring);
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
            ring_fail(s, -ret, "io_uring_submit");
        }
        reap(s);
    }
}

/* Remove a pending IORING_OP_TIMEOUT and wait until the kernel lets go. */
static void
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
static int32_t
op_wait(struct uring_scheduler *s, struct uring_op *op)
{
    struct op_wait_args a = {s, op};

    rb_ensure(op_wait_yield, (VALUE)&a, op_wait_ensure, (VALUE)&a);
    return op->result;
}

/* The deadline `interval` from now on CLOCK_MONOTONIC, the clock of
 * io_uring's timeouts, for IORING_TIMEOUT_ABS: a timer then runs from the
 * moment it is asked for, not from the loop's next submission, which a
 * busy fiber can delay. */
static struct __kernel_timespec
deadline_after(struct timespec interval)
{
    struct __kernel_timespec ts;
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    /* Far beyond any uptime (and the kernel's ktime range): never. */
    if (interval.tv_sec > ((time_t)1 << 40)) interval.tv_sec = (time_t)1 << 40;
    ts.tv_sec = (long long)now.tv_sec + interval.tv_sec;
    ts.tv_nsec = now.tv_nsec + interval.tv_nsec;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* A duration given to a hook that Ruby converts itself without a
 * scheduler (sleep, IO#wait, IO.select): the same errors as there,
 * ArgumentError for a negative one and RangeError beyond time_t. */
static struct __kernel_timespec
deadline_of(VALUE duration)
{
    return deadline_after(rb_time_timespec_interval(duration));
}

/* A duration Ruby hands on without checking (Timeout's, Queue#pop's):
 * negative ones are 0, too large ones never come. */
static struct __kernel_timespec
deadline_clamped(VALUE duration)
{
    struct timespec interval = {0, 0};
    double d = NUM2DBL(duration);

    if (d > 1e12) interval.tv_sec = (time_t)1 << 40;
    else if (d > 0) interval = rb_time_timespec_interval(duration);
    return deadline_after(interval);
}

/* ------------------------------------------------------------------ */
/* Fibers in I/O hooks, and #fiber_interrupt */

static void
hook_enter(struct uring_scheduler *s, struct io_hook *h)
{
    h->fiber = rb_fiber_current();
    h->interrupt = Qnil;
    h->op = NULL;
    h->nops = 0;
    h->next = &s->hooks;
    h->prev = s->hooks.prev;
    s->hooks.prev->next = h;
    s->hooks.prev = h;
}

static void
hook_leave(struct io_hook *h)
{
    h->prev->next = h->next;
    h->next->prev = h->prev;
    h->prev = h->next = h;
}

/* Raise what #fiber_interrupt left for this hook: call before starting an
 * operation on the descriptor, and after each one. */
static void
hook_check(struct io_hook *h)
{
    if (!NIL_P(h->interrupt)) rb_exc_raise(h->interrupt);
}

/* op_wait for an operation of hook `h`. */
static int32_t
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
static void
hooks_cancel_interrupted(struct uring_scheduler *s)
{
    struct io_hook *h;

    s->interrupts_pending = 0;
    for (h = s->hooks.next; h != &s->hooks; h = h->next) {
        if (!NIL_P(h->interrupt)) hook_cancel(s, h);
    }
}

/* ------------------------------------------------------------------ */
/* The event loop */

static int
scheduler_busy_p(struct uring_scheduler *s)
{
    return s->ready_len > 0 || s->inflight > 0 || s->blocked->num_entries > 0;
}

static void
resume_entry(struct uring_scheduler *s, struct ready_entry e)
{
    if (NIL_P(e.fiber) || !RTEST(rb_fiber_alive_p(e.fiber))) return;
    if (e.fiber == rb_fiber_current()) return;  /* run_once in the loop fiber */
    if (NIL_P(e.klass)) {
        rb_fiber_transfer(e.fiber, 0, NULL);
    }
    else {
        VALUE args[2] = {e.klass, e.message};
        rb_fiber_raise(e.fiber, 2, args);
    }
}

/* One turn of the loop: run the fibers that are ready, then submit what
 * they queued and collect completions (waiting for one if nothing is
 * ready). */
static void
run_once(struct uring_scheduler *s)
{
    long n = s->ready_len;

    if (s->interrupts_pending) hooks_cancel_interrupted(s);
    while (n-- > 0 && s->ready_len > 0) {
        struct ready_entry e = ready_shift(s);

        /* A timer fired and the fiber's operation completed in the same
         * turn: the completion goes first, as the kernel has already done
         * the work (a read has consumed its bytes, which the exception
         * would lose).  The raise is held back until the fiber next enters
         * a hook, where it is raised before anything else is queued; it is
         * dropped if the fiber leaves its timeout_after first. */
        if (!NIL_P(e.klass) && ready_resume_pending_p(s, e.fiber)) {
            held_push(s, e);
            continue;
        }
        resume_entry(s, e);
    }
    if (s->ready_len > 0) {
        poll_completions(s);
    }
    else if (s->inflight > 0 || s->blocked->num_entries > 0) {
        wait_completions(s, 1);
    }
}

/*
 *  call-seq: run -> nil
 *
 *  Runs the event loop until no fiber is ready, waiting or blocked.
 *  Called by #close (at the end of the thread that set the scheduler).
 */
static VALUE
scheduler_run(VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);

    while (scheduler_busy_p(s)) {
        run_once(s);
    }
    return Qnil;
}

/*
 *  call-seq: close -> nil
 *
 *  Runs the event loop to completion, then releases the ring.  Using the
 *  scheduler afterwards raises RuntimeError.  Also called as
 *  #scheduler_close by Fiber.set_scheduler and at thread exit.
 */
/* The loop ended in an exception (Thread#kill of the scheduler's thread,
 * a signal) with operations in flight: cancel them all and wait for the
 * kernel to let go, now that their fibers are still alive.  Left to
 * scheduler_free, the kernel could write into fiber stacks the same GC
 * has freed. */
static VALUE
scheduler_cancel_all(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (!s->ring_live || s->generation != fork_generation || NIL_P(s->thread) ||
        s->thread != rb_thread_current()) {
        return Qnil;
    }
    while (s->inflight > 0) {
        long before = s->inflight;
        struct io_uring_sqe *sqe = sqe_get(s);

        /* Again after every completion: a linked operation can only be
         * cancelled once the one before it has completed. */
        io_uring_prep_cancel(sqe, NULL, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data(sqe, NULL);
        while (s->inflight == before) wait_completions(s, 0);
    }
    return Qnil;
}

static VALUE
scheduler_close(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (s->closed) return Qnil;
    if (!NIL_P(s->thread) || s->generation != fork_generation) {
        rb_ensure(scheduler_run, self, scheduler_cancel_all, self);
    }
    rb_funcall(self, rb_intern("close_workers"), 0);
    s->closed = 1;
    ring_release(s);
    return Qnil;
}

/*
 *  call-seq: closed? -> true or false
 */
static VALUE
scheduler_closed_p(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    return s->closed ? Qtrue : Qfalse;
}

/* ------------------------------------------------------------------ */
/* Hooks */

struct wait_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    int fd, mask;
    int timed;                  /* with a deadline: */
    struct __kernel_timespec deadline;
};

static VALUE
io_wait_poll(VALUE ptr)
{
    struct wait_args *a = (struct wait_args *)ptr;
    struct uring_scheduler *s = a->s;
    struct uring_op op = {0};
    struct io_uring_sqe *sqe;
    int32_t result;

    /* The poll and its timeout go in one submission: were the queue to
     * fill between them, the poll would be submitted alone, unlinked. */
    if (a->timed) sq_reserve(s, 2);
    hook_check(&a->hook);
    sqe = op_sqe(s, &op);
    io_uring_prep_poll_add(sqe, a->fd, a->mask);
    if (a->timed) {
        sqe->flags |= IOSQE_IO_LINK;
        sqe = sqe_get(s);
        io_uring_prep_link_timeout(sqe, &a->deadline, IORING_TIMEOUT_ABS);
        io_uring_sqe_set_data(sqe, NULL);
    }
    result = hook_wait(s, &a->hook, &op);
    if (result == -ECANCELED) return Qfalse;
    if (result < 0) rb_syserr_fail(-result, "io_wait");
    /* An error or hang-up makes every requested event "ready": the next
     * read or write reports it. */
    if (!(result & a->mask) && (result & (POLLERR | POLLHUP | POLLNVAL))) return INT2NUM(a->mask);
    return INT2NUM(result & a->mask);
}

static VALUE
io_wait_leave(VALUE ptr)
{
    hook_leave(&((struct wait_args *)ptr)->hook);
    return Qnil;
}

/*
 *  call-seq: io_wait(io, events, timeout) -> events or false
 *
 *  Waits with IORING_OP_POLL_ADD (and a linked timeout) until +io+ is ready
 *  for some of +events+; returns those, or false on timeout.
 */
static VALUE
scheduler_io_wait(VALUE self, VALUE io, VALUE events, VALUE timeout)
{
    struct wait_args a;

    a.s = scheduler_get(self);
    a.fd = rb_io_descriptor(io);
    a.mask = NUM2INT(events);
    a.timed = !NIL_P(timeout);
    if (a.timed) a.deadline = deadline_of(timeout);
    hook_enter(a.s, &a.hook);
    return rb_ensure(io_wait_poll, (VALUE)&a, io_wait_leave, (VALUE)&a);
}

/* Block until fd is ready for `mask` (kernels that answer -EAGAIN). */
static void
fd_wait(struct uring_scheduler *s, struct io_hook *h, int fd, int mask)
{
    struct uring_op op = {0};

    hook_check(h);
    io_uring_prep_poll_add(op_sqe(s, &op), fd, mask);
    hook_wait(s, h, &op);
}

struct buffer_args {
    VALUE buffer;
    int locked;
};

static void
buffer_lock(struct buffer_args *b)
{
    b->locked = !RTEST(rb_funcall(b->buffer, id_locked_p, 0));
    if (b->locked) rb_io_buffer_lock(b->buffer);
}

enum io_direction { IO_READ, IO_WRITE };

struct io_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    struct buffer_args b;
    enum io_direction dir;
    int fd;
    size_t length;              /* at least this much, unless EOF */
    size_t offset;              /* in the buffer */
    off_t from;                 /* file offset, or -1: the file position */
};

static VALUE
io_transfer(VALUE ptr)
{
    struct io_args *a = (struct io_args *)ptr;
    struct uring_scheduler *s = a->s;
    void *base;
    size_t size, total = 0;

    if (a->dir == IO_READ) {
        rb_io_buffer_get_bytes_for_writing(a->b.buffer, &base, &size);
    }
    else {
        const void *cbase;
        rb_io_buffer_get_bytes_for_reading(a->b.buffer, &cbase, &size);
        base = (void *)cbase;
    }
    if (a->offset > size) rb_raise(rb_eArgError, "offset exceeds buffer size");

    for (;;) {
        struct uring_op op = {0};
        struct io_uring_sqe *sqe;
        char *p = (char *)base + a->offset;
        unsigned int n = (unsigned int)(size - a->offset > 0x7ffff000 ? 0x7ffff000 : size - a->offset);
        uint64_t at = a->from < 0 ? (uint64_t)-1 : (uint64_t)(a->from + total);
        int32_t result;

        hook_check(&a->hook);
        sqe = op_sqe(s, &op);
        if (a->dir == IO_READ) io_uring_prep_read(sqe, a->fd, p, n, at);
        else io_uring_prep_write(sqe, a->fd, p, n, at);
        result = hook_wait(s, &a->hook, &op);

        if (result > 0) {
            total += result;
            a->offset += result;
            if (total >= a->length || a->offset >= size) break;
        }
        else if (result == 0) {
            break;
        }
        else if (result == -EAGAIN || result == -EWOULDBLOCK) {
            if (a->length == 0) return rb_fiber_scheduler_io_result(-1, -result);
            fd_wait(s, &a->hook, a->fd, a->dir == IO_READ ? POLLIN : POLLOUT);
        }
        else if (result == -EINTR) {
            continue;
        }
        else {
            return rb_fiber_scheduler_io_result(-1, -result);
        }
    }
    return SIZET2NUM(total);
}

static VALUE
io_unlock(VALUE ptr)
{
    struct io_args *a = (struct io_args *)ptr;
    hook_leave(&a->hook);
    if (a->b.locked) rb_io_buffer_unlock(a->b.buffer);
    return Qnil;
}

static VALUE
io_operation(VALUE self, enum io_direction dir, VALUE io, VALUE buffer,
             VALUE from, VALUE length, VALUE offset)
{
    struct io_args a;

    a.s = scheduler_get(self);
    a.dir = dir;
    a.fd = rb_io_descriptor(io);
    a.b.buffer = buffer;
    a.length = NUM2SIZET(length);
    a.offset = NUM2SIZET(offset);
    a.from = NIL_P(from) ? -1 : NUM2OFFT(from);
    buffer_lock(&a.b);
    hook_enter(a.s, &a.hook);
    return rb_ensure(io_transfer, (VALUE)&a, io_unlock, (VALUE)&a);
}

/*
 *  call-seq: io_read(io, buffer, length, offset) -> read length or -errno
 *
 *  Reads at least +length+ bytes (unless end of file) from +io+ into
 *  +buffer+ at +offset+ with IORING_OP_READ, straight into the buffer's
 *  memory.  Returns the number of bytes read, or a negated errno.
 */
static VALUE
scheduler_io_read(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset)
{
    return io_operation(self, IO_READ, io, buffer, Qnil, length, offset);
}

/*
 *  call-seq: io_write(io, buffer, length, offset) -> written length or -errno
 *
 *  Writes at least +length+ bytes of +buffer+ from +offset+ to +io+ with
 *  IORING_OP_WRITE.
 */
static VALUE
scheduler_io_write(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset)
{
    return io_operation(self, IO_WRITE, io, buffer, Qnil, length, offset);
}

/*
 *  call-seq: io_pread(io, buffer, from, length, offset) -> read length or -errno
 *
 *  Like #io_read, at file offset +from+, leaving the file position alone.
 */
static VALUE
scheduler_io_pread(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset)
{
    return io_operation(self, IO_READ, io, buffer, from, length, offset);
}

/*
 *  call-seq: io_pwrite(io, buffer, from, length, offset) -> written length or -errno
 *
 *  Like #io_write, at file offset +from+, leaving the file position alone.
 */
static VALUE
scheduler_io_pwrite(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset)
{
    return io_operation(self, IO_WRITE, io, buffer, from, length, offset);
}

/* ---- splice ---- */

/* An idle pipe, or a new one (of SPLICE_PIPE_SIZE if the system allows).
 * Returns 0 or a negated errno. */
static int
pipe_take(struct uring_scheduler *s, struct splice_pipe *p)
{
    struct splice_pipe *q;
    int i, size;

    for (i = 0; i < s->npipes; i++) {
        if (!s->pipes[i].busy) {
            s->pipes[i].busy = 1;
            *p = s->pipes[i];
            return 0;
        }
    }
    if (s->npipes == s->pipes_capa) {
        REALLOC_N(s->pipes, struct splice_pipe, s->pipes_capa * 2);
        s->pipes_capa *= 2;
    }
    q = &s->pipes[s->npipes];
    if (pipe2(q->fds, O_CLOEXEC) < 0) return -errno;
    fcntl(q->fds[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE);   /* best effort */
    size = fcntl(q->fds[1], F_GETPIPE_SZ);
    q->capacity = size > 0 ? (unsigned int)size : (1 << 16);
    q->busy = 1;
    s->npipes++;
    *p = *q;
    return 0;
}

/* Done with `p`: an empty pipe goes back to the pool (up to SPLICE_POOL
 * idle ones); one that may hold bytes is closed. */
static void
pipe_give(struct uring_scheduler *s, struct splice_pipe *p, int empty)
{
    int i, idle = 0, found = -1;

    if (p->fds[0] < 0) return;
    for (i = 0; i < s->npipes; i++) {
        if (s->pipes[i].fds[0] == p->fds[0] && s->pipes[i].busy) found = i;
        else if (!s->pipes[i].busy) idle++;
    }
    if (found >= 0) {
        if (empty && idle < SPLICE_POOL && !s->closed && s->ring_live) {
            s->pipes[found].busy = 0;
        }
        else {
            close(p->fds[0]);
            close(p->fds[1]);
            s->pipes[found] = s->pipes[--s->npipes];
        }
    }
    p->fds[0] = p->fds[1] = -1;
}

struct splice_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    int from, to;
    off_t from_offset, to_offset;   /* -1: the file position */
    size_t length;
    struct splice_pipe pipes[SPLICE_CHUNKS];
    int dirty[SPLICE_CHUNKS];       /* the pipe may hold bytes */
    struct uring_op ops[2 * SPLICE_CHUNKS + 1];
    int pending;                    /* operations not completed */
    size_t done;                    /* bytes written to `to` */
    int outs[SPLICE_CHUNKS];        /* the operations of a wait that write */
    int nouts;                      /* to `to`, not counted in `done` yet */
    int advance_from;               /* `from` is a file read at its position */
};

/* The fiber waits for a whole chain: only its last completion wakes it. */
static void
splice_op_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct splice_args *a = op->arg;

    if (--a->pending == 0) ready_push(s, op->fiber);
}

static struct io_uring_sqe *
splice_sqe(struct splice_args *a, int i)
{
    struct io_uring_sqe *sqe = op_sqe(a->s, &a->ops[i]);

    a->ops[i].complete = splice_op_complete;
    a->ops[i].arg = a;
    a->pending++;
    return sqe;
}

static VALUE
splice_wait_yield(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;

    while (a->pending > 0) suspend(a->s);
    return Qnil;
}

/* Leaving early (an exception in the fiber): the operations are cancelled
 * in chain order, each reaped before the next, which may only start once
 * the one before it completes. */
static VALUE
splice_wait_ensure(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    int i;

    for (i = 0; i < a->hook.nops; i++) op_cancel(a->s, &a->ops[i]);
    a->hook.op = NULL;
    a->hook.nops = 0;
    return Qnil;
}

/* Submit the `n` operations prepared in a->ops and wait until all have
 * completed.  Those listed in a->outs write to `to`: what they moved is
 * counted in a->done by the caller, or by splice_leave() if the wait ends
 * in an exception. */
static void
splice_wait(struct splice_args *a, int n)
{
    a->hook.op = a->ops;
    a->hook.nops = n;
    rb_ensure(splice_wait_yield, (VALUE)a, splice_wait_ensure, (VALUE)a);
    hook_check(&a->hook);
}

static int64_t
splice_at(off_t offset, size_t done)
{
    return offset < 0 ? -1 : (int64_t)(offset + (off_t)done);
}

/* Write the `left` bytes stranded in pipe `p` (the destination took less
 * than the chain moved).  Returns 0, or a negated errno. */
static int32_t
splice_drain(struct splice_args *a, struct splice_pipe *p, size_t left)
{
    int wait = 0;

    while (left > 0) {
        struct io_uring_sqe *sqe;
        int n = 0;
        int32_t r;

        sq_reserve(a->s, 2);
        a->pending = 0;
        if (wait) {
            sqe = splice_sqe(a, n++);
            io_uring_prep_poll_add(sqe, a->to, POLLOUT);
            sqe->flags |= IOSQE_IO_LINK;
        }
        a->outs[0] = n;
        a->nouts = 1;
        sqe = splice_sqe(a, n++);
        io_uring_prep_splice(sqe, p->fds[0], -1, a->to, splice_at(a->to_offset, a->done),
                             (unsigned int)left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        splice_wait(a, n);
        a->nouts = 0;

        if (wait && a->ops[0].result < 0) return a->ops[0].result;
        r = a->ops[n - 1].result;
        wait = 0;
        if (r > 0) {
            left -= r;
            a->done += r;
        }
        else if (r == -EAGAIN || r == -EWOULDBLOCK) {
            wait = 1;
        }
        else if (r != -EINTR) {
            return r < 0 ? r : -EIO;
        }
    }
    return 0;
}

/* splice(2) from a TCP socket stops at urgent data (MSG_OOB), answering 0
 * or EAGAIN with bytes behind the mark; read(2) steps over the urgent
 * byte, so the rest is left to IO.copy_stream's ordinary loop. */
static int
splice_at_urgent_mark_p(int fd)
{
    int at = 0;

    return ioctl(fd, SIOCATMARK, &at) == 0 && at;
}

static int
splice_refused_p(int32_t result)
{
    return result == -EINVAL || result == -ENOSYS || result == -EOPNOTSUPP;
}

/*
 * One round: up to SPLICE_CHUNKS pipes, each filled from `from` and
 * emptied into `to` by a pair of splices, the pairs linked one after the
 * other.  Inside a pair the link is hard: the second splice moves what the
 * first one got, even if that is less than a pipeful (a socket gives what
 * it has), and never waits on the pipe.  Between pairs it is soft: a pair
 * that moved less than a whole chunk ends the chain, so no byte is read
 * past a short read or ahead of bytes the destination has not taken yet.
 * The round's bytes are returned as soon as there are any.
 */
static VALUE
splice_transfer(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    struct uring_scheduler *s = a->s;
    int wait_in = 0;

    for (;;) {
        struct io_uring_sqe *sqe;
        unsigned int lengths[SPLICE_CHUNKS];
        int in[SPLICE_CHUNKS], out[SPLICE_CHUNKS];
        int chunks = 0, n = 0, k, stranded = -1, eof = 0, again = 0, urgent = 0, clean = 1;
        int32_t error = 0;
        size_t planned = 0, left = 0;

        hook_check(&a->hook);
        for (k = 0; k < SPLICE_CHUNKS && planned < a->length; k++) {
            if (a->pipes[k].fds[0] < 0) {
                int e = pipe_take(s, &a->pipes[k]);
                if (e < 0) {
                    if (k == 0) return Qnil;    /* out of descriptors: ruby's loop */
                    break;
                }
                a->dirty[k] = 0;
            }
            lengths[k] = a->pipes[k].capacity;
            if (a->length - planned < lengths[k]) lengths[k] = (unsigned int)(a->length - planned);
            planned += lengths[k];
            chunks++;
        }

        sq_reserve(s, 2 * chunks + 1);
        a->pending = 0;
        if (wait_in) {
            sqe = splice_sqe(a, n++);
            io_uring_prep_poll_add(sqe, a->from, POLLIN);
            sqe->flags |= IOSQE_IO_LINK;
        }
        planned = 0;
        for (k = 0; k < chunks; k++) {
            in[k] = n;
            sqe = splice_sqe(a, n++);
            io_uring_prep_splice(sqe, a->from, splice_at(a->from_offset, a->done + planned), a->pipes[k].fds[1], -1,
                                 lengths[k], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            sqe->flags |= IOSQE_IO_HARDLINK;
            out[k] = a->outs[k] = n;
            sqe = splice_sqe(a, n++);
            io_uring_prep_splice(sqe, a->pipes[k].fds[0], -1, a->to, splice_at(a->to_offset, a->done + planned),
                                 lengths[k], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (k + 1 < chunks) sqe->flags |= IOSQE_IO_LINK;
            a->dirty[k] = 1;
            planned += lengths[k];
        }
        a->nouts = chunks;
        splice_wait(a, n);
        a->nouts = 0;

        wait_in = 0;
        for (k = 0; k < chunks; k++) {
            int32_t got = a->ops[in[k]].result, put = a->ops[out[k]].result;
            size_t moved = put > 0 ? (size_t)put : 0;

            /* what the pipe holds now */
            a->dirty[k] = (got > 0 ? (size_t)got : 0) != moved;
        }
        for (k = 0; k < chunks; k++) {
            int32_t got = a->ops[in[k]].result, put = a->ops[out[k]].result;
            size_t moved = put > 0 ? (size_t)put : 0;

            if (got <= 0) {
                if ((got == 0 || got == -EAGAIN || got == -EWOULDBLOCK) && splice_at_urgent_mark_p(a->from)) urgent = 1;
                else if (got == 0) eof = 1;
                else if (got == -EAGAIN || got == -EWOULDBLOCK) again = 1;
                else if (got != -ECANCELED && got != -EINTR) error = got;
                break;
            }
            a->done += moved;
            if (put < 0 && put != -EAGAIN && put != -EWOULDBLOCK && put != -ECANCELED && put != -EINTR) {
                error = put;                /* the pipe keeps what was read */
                break;
            }
            if (moved < (size_t)got) {
                stranded = k;
                left = got - moved;
                break;
            }
            if ((unsigned int)got < lengths[k]) break;
        }
        if (stranded >= 0) {
            error = splice_drain(a, &a->pipes[stranded], left);
            if (!error) a->dirty[stranded] = 0;
        }

        for (k = 0; k < chunks; k++) {
            if (a->dirty[k]) clean = 0;
        }
        if (error) {
            /* A refusal means "not done" only while no byte has been
             * read: one by `to` after a read leaves bytes in a pipe, which
             * nil would lose. */
            if (a->done == 0 && clean && splice_refused_p(error)) return Qnil;
            return INT2NUM(error);
        }
        if (urgent) return a->done > 0 ? SIZET2NUM(a->done) : Qnil;
        if (a->done > 0) return SIZET2NUM(a->done);
        if (eof) return INT2FIX(0);
        if (again) wait_in = 1;
    }
}

/* Leaving #io_splice, also by an exception: the pipes go back (or are
 * closed), and a file read at its position is left just past the bytes
 * written to `to`, as read(2) and write(2) would have left it. */
static VALUE
splice_leave(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    int k;

    hook_leave(&a->hook);
    for (k = 0; k < a->nouts; k++) {
        int32_t put = a->ops[a->outs[k]].result;
        if (put > 0) a->done += put;
    }
    /* Not after IO#close interrupted the hook: the descriptor is closed
     * (or closing) and its number may already be another file's. */
    if (a->advance_from && NIL_P(a->hook.interrupt)) {
        lseek(a->from, a->from_offset + (off_t)a->done, SEEK_SET);
    }
    for (k = 0; k < SPLICE_CHUNKS; k++) {
        pipe_give(a->s, &a->pipes[k], !a->dirty[k]);
    }
    return Qnil;
}

/*
 *  call-seq: io_splice(from, from_offset, to, to_offset, length) -> copied length, 0, -errno or nil
 *
 *  Copies up to +length+ bytes from +from+ to +to+ with IORING_OP_SPLICE
 *  through pipes of the scheduler's pool (1 MiB each where the system
 *  allows): no byte is copied to user space.  Up to two pipefuls are in
 *  flight in one submission, as a chain of linked splices; a descriptor
 *  that is not ready is waited for with IORING_OP_POLL_ADD.  A regular
 *  file read at its position is read at explicit offsets, and its position
 *  is then set just past the bytes written to +to+.  Returns the bytes
 *  copied (at least one), 0 at end of file, a negated errno, or nil
 *  (nothing copied) for a destination opened with O_APPEND or O_DIRECT, a
 *  descriptor splice(2) does not support, or a TCP source at urgent data
 *  (MSG_OOB), which splice(2) does not step over and read(2) does.  See
 *  Fiber::Scheduler#io_splice.
 */
static VALUE
scheduler_io_splice(VALUE self, VALUE from, VALUE from_offset, VALUE to, VALUE to_offset, VALUE length)
{
    struct splice_args a;
    struct stat st;
    int flags, k;

    memset(&a, 0, sizeof(a));
    a.s = scheduler_get(self);
    a.from = rb_io_descriptor(from);
    a.to = rb_io_descriptor(to);
    a.from_offset = NIL_P(from_offset) ? -1 : NUM2OFFT(from_offset);
    a.to_offset = NIL_P(to_offset) ? -1 : NUM2OFFT(to_offset);
    a.length = NUM2SIZET(length);
    if (a.length == 0) return INT2FIX(0);
    if (a.length > 0x7ffff000) a.length = 0x7ffff000;

    /* splice(2) refuses O_APPEND with EINVAL once bytes are in the pipe */
    flags = fcntl(a.to, F_GETFL);
    if (flags < 0 || (flags & O_APPEND)) return Qnil;
#ifdef O_DIRECT
    if (flags & O_DIRECT) return Qnil;     /* nor would a pipeful be aligned */
#endif

    /* Bytes read from a file but not written (EPIPE, an interrupt) must
     * not move its position: read it at offsets, set the position after. */
    if (a.from_offset < 0 && fstat(a.from, &st) == 0 && S_ISREG(st.st_mode)) {
        off_t position = lseek(a.from, 0, SEEK_CUR);
        if (position >= 0) {
            a.from_offset = position;
            a.advance_from = 1;
        }
    }

    for (k = 0; k < SPLICE_CHUNKS; k++) a.pipes[k].fds[0] = a.pipes[k].fds[1] = -1;
    hook_enter(a.s, &a.hook);
    return rb_ensure(splice_transfer, (VALUE)&a, splice_leave, (VALUE)&a);
}

/* ---- close ---- */

/*
 *  call-seq: io_close(fd) -> true or -errno
 *
 *  Closes the descriptor +fd+ with IORING_OP_CLOSE, the fiber waiting for
 *  the result, which is returned as IO#close expects: true, or a negated
 *  errno.  Also when the wait is interrupted, the close has completed
 *  before the exception propagates: the descriptor is never left open.
 */
static VALUE
scheduler_io_close(VALUE self, VALUE fd)
{
    struct uring_scheduler *s = scheduler_get(self);
    int descriptor = NUM2INT(fd);
    struct uring_op op = {0};
    int32_t result;

    io_uring_prep_close(op_sqe(s, &op), descriptor);
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
static VALUE
scheduler_fiber_interrupt(VALUE self, VALUE fiber, VALUE exception)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    struct io_hook *h;

    if (s->closed || !s->ring_live) return Qnil;
    if (s->generation != fork_generation) {
        scheduler_after_fork(s);    /* the parent's fibers are not ours */
        return Qnil;
    }
    for (h = s->hooks.next; h != &s->hooks; h = h->next) {
        if (h->fiber != fiber) continue;
        if (NIL_P(h->interrupt)) h->interrupt = exception;
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

/* ---- fork ---- */

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
static VALUE
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

/* ---- block / unblock / sleep ---- */

struct block_wait {
    struct uring_scheduler *s;
    VALUE fiber;
    int unblocked;
    int timed_out;
    struct uring_op timer;
    struct __kernel_timespec deadline;
};

static void
block_timer_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct block_wait *w = (struct block_wait *)((char *)op - offsetof(struct block_wait, timer));
    st_data_t key = (st_data_t)w->fiber;

    if (op->result == -ETIME && st_delete(s->blocked, &key, NULL)) {
        w->timed_out = 1;
        ready_push(s, w->fiber);
    }
}

static VALUE
block_yield(VALUE ptr)
{
    struct block_wait *w = (struct block_wait *)ptr;

    while (!w->unblocked && !w->timed_out) {
        suspend(w->s);
    }
    return w->unblocked ? Qtrue : Qfalse;
}

static VALUE
block_ensure(VALUE ptr)
{
    struct block_wait *w = (struct block_wait *)ptr;
    st_data_t key = (st_data_t)w->fiber;

    st_delete(w->s->blocked, &key, NULL);
    /* An #unblock that came after the timer fired (or the exception was
     * raised), before the fiber ran again, found it no longer blocked and
     * left a wake-up in `woken`: it was meant for this wait, which is
     * over.  Kept, it would end the fiber's next block at once. */
    key = (st_data_t)w->fiber;
    st_delete(w->s->woken, &key, NULL);
    timer_cancel(w->s, &w->timer);
    return Qnil;
}

static VALUE
block_until(struct uring_scheduler *s, VALUE timeout)
{
    struct block_wait w;

    memset(&w, 0, sizeof(w));
    w.s = s;
    w.fiber = rb_fiber_current();
    if (st_delete(s->woken, (st_data_t *)&w.fiber, NULL)) {
        return Qtrue;           /* unblocked already: see scheduler_unblock */
    }
    st_insert(s->blocked, (st_data_t)w.fiber, (st_data_t)&w);
    if (!NIL_P(timeout)) {
        w.deadline = deadline_clamped(timeout);
        w.timer.complete = block_timer_complete;
        io_uring_prep_timeout(op_sqe(s, &w.timer), &w.deadline, 0, IORING_TIMEOUT_ABS);
    }
    return rb_ensure(block_yield, (VALUE)&w, block_ensure, (VALUE)&w);
}

/*
 *  call-seq: block(blocker, timeout = nil) -> true or false
 *
 *  Suspends the current fiber until #unblock is called for it (true) or
 *  +timeout+ seconds pass (false), with an IORING_OP_TIMEOUT.
 */
static VALUE
scheduler_block(int argc, VALUE *argv, VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);
    VALUE timeout = rb_check_arity(argc, 1, 2) > 1 ? argv[1] : Qnil;

    return block_until(s, timeout);
}

static int
woken_dead_i(st_data_t key, st_data_t value, st_data_t arg)
{
    return RTEST(rb_fiber_alive_p((VALUE)key)) ? ST_CONTINUE : ST_DELETE;
}

/* Forget the early wake-ups of fibers that have finished. */
static void
woken_sweep(struct uring_scheduler *s)
{
    st_foreach(s->woken, woken_dead_i, 0);
}

/*
 *  call-seq: unblock(blocker, fiber) -> nil
 *
 *  Makes +fiber+, blocked in #block, ready again.  May be called from any
 *  thread: the scheduler's thread is woken if it waits in the kernel.
 */
static VALUE
scheduler_unblock(VALUE self, VALUE blocker, VALUE fiber)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    st_data_t key = (st_data_t)fiber, value;

    if (s->closed || !s->ring_live) return Qnil;
    if (s->generation != fork_generation) {
        scheduler_after_fork(s);    /* never wake the parent's loop */
        return Qnil;
    }
    if (st_delete(s->blocked, &key, &value)) {
        struct block_wait *w = (struct block_wait *)value;
        w->unblocked = 1;
        ready_push(s, fiber);
        if (s->thread != rb_thread_current()) wake_ubf(s);
    }
    else if (RTEST(rb_fiber_alive_p(fiber))) {
        /* Not blocked yet: Mutex, ConditionVariable and Queue register a
         * waiter before it calls #block, and may wake it in between.  Its
         * next #block returns at once (a spurious wakeup at worst, which
         * those callers expect). */
        if (s->woken->num_entries >= 64) woken_sweep(s);
        st_insert(s->woken, key, 1);
    }
    return Qnil;
}

/*
 *  call-seq: kernel_sleep(duration = nil) -> nil
 *
 *  Sleeps with an IORING_OP_TIMEOUT; without a duration, until the fiber
 *  is woken (#unblock) or raised in.
 */
static VALUE
scheduler_kernel_sleep(int argc, VALUE *argv, VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);
    VALUE duration = rb_check_arity(argc, 0, 1) ? argv[0] : Qnil;
    struct uring_op op = {0};
    struct __kernel_timespec deadline;

    if (NIL_P(duration)) {
        block_until(s, Qnil);
        return Qnil;
    }
    deadline = deadline_of(duration);
    io_uring_prep_timeout(op_sqe(s, &op), &deadline, 0, IORING_TIMEOUT_ABS);
    op_wait(s, &op);
    return Qnil;
}

/* ---- timeout_after ---- */

struct timeout_args {
    struct uring_scheduler *s;
    VALUE fiber, klass, message, duration;
    struct uring_op timer;
    struct __kernel_timespec deadline;
};

static void
timeout_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct timeout_args *t = (struct timeout_args *)((char *)op - offsetof(struct timeout_args, timer));

    if (op->result == -ETIME) ready_push_raise(s, t->fiber, t->klass, t->message, t);
}

static VALUE
timeout_yield(VALUE ptr)
{
    struct timeout_args *t = (struct timeout_args *)ptr;
    return rb_yield(t->duration);
}

static VALUE
timeout_ensure(VALUE ptr)
{
    struct timeout_args *t = (struct timeout_args *)ptr;

    timer_cancel(t->s, &t->timer);
    ready_drop_raise(t->s, t);
    return Qnil;
}

/*
 *  call-seq: timeout_after(duration, klass, message) { |duration| ... } -> result of the block
 *
 *  Runs the block; if it has not finished after +duration+ seconds (an
 *  IORING_OP_TIMEOUT), raises klass, message in the fiber running it.
 */
static VALUE
scheduler_timeout_after(VALUE self, VALUE duration, VALUE klass, VALUE message)
{
    struct timeout_args t;

    memset(&t, 0, sizeof(t));
    t.s = scheduler_get(self);
    t.fiber = rb_fiber_current();
    t.klass = klass;
    t.message = message;
    t.duration = duration;
    t.deadline = deadline_clamped(duration);
    t.timer.complete = timeout_complete;
    io_uring_prep_timeout(op_sqe(t.s, &t.timer), &t.deadline, 0, IORING_TIMEOUT_ABS);
    return rb_ensure(timeout_yield, (VALUE)&t, timeout_ensure, (VALUE)&t);
}

/* ---- io_select ---- */

struct select_entry {
    struct uring_op op;         /* first: the op is the entry */
    struct select_state *state;
    VALUE io;                   /* as given (returned as is) */
    int fd;
    int set;                    /* 0 readables, 1 writables, 2 exceptables */
    int buffered;               /* a readable with buffered data: ready */
};

struct select_state {
    struct uring_scheduler *s;
    struct select_entry *entries;
    long count;
    int ready;                  /* something completed, or the timer fired */
    struct uring_op timer;
    int timed;                  /* with a deadline: */
    struct __kernel_timespec deadline;
    VALUE fiber;
};

static void
select_wake(struct uring_scheduler *s, struct select_state *st)
{
    if (!st->ready) {
        st->ready = 1;
        ready_push(s, st->fiber);
    }
}

static void
select_poll_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct select_entry *e = (struct select_entry *)op;
    if (op->result != -ECANCELED) select_wake(s, e->state);
}

static void
select_timer_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct select_state *st = (struct select_state *)((char *)op - offsetof(struct select_state, timer));
    if (op->result == -ETIME) select_wake(s, st);
}

/* Queue the polls (and the timer), then wait.  Inside the rb_ensure: a
 * failure while queueing (a full ring that cannot be submitted) still has
 * select_ensure take back whatever was queued before it. */
static VALUE
select_wait(VALUE ptr)
{
    struct select_state *st = (struct select_state *)ptr;
    struct uring_scheduler *s = st->s;
    static const int masks[3] = {POLLIN, POLLOUT, POLLPRI};
    long i;

    /* With buffered data the polls still go in, to report the descriptors
     * ready at once as well (IO.select's zero timeout then); select_ensure
     * removes them right behind, in the same submission. */
    for (i = 0; i < st->count; i++) {
        struct select_entry *e = &st->entries[i];
        if (e->buffered) continue;
        e->op.complete = select_poll_complete;
        io_uring_prep_poll_add(op_sqe(s, &e->op), e->fd, masks[e->set]);
    }
    if (!st->ready && st->timed) {
        st->timer.complete = select_timer_complete;
        io_uring_prep_timeout(op_sqe(s, &st->timer), &st->deadline, 0, IORING_TIMEOUT_ABS);
    }
    while (!st->ready) suspend(s);
    return Qnil;
}

/* Cancel whatever is still in flight and wait until the kernel lets go. */
static VALUE
select_ensure(VALUE ptr)
{
    struct select_state *st = (struct select_state *)ptr;
    struct uring_scheduler *s = st->s;
    long i;
    int pending;

    st->ready = 1;              /* no wakeups from here on */
    for (i = 0; i < st->count; i++) {
        if (st->entries[i].op.inflight) {
            struct io_uring_sqe *sqe = sqe_get(s);
            io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&st->entries[i].op);
            io_uring_sqe_set_data(sqe, NULL);
        }
    }
    if (st->timer.inflight) {
        struct io_uring_sqe *sqe = sqe_get(s);
        io_uring_prep_timeout_remove(sqe, (__u64)(uintptr_t)&st->timer, 0);
        io_uring_sqe_set_data(sqe, NULL);
    }
    do {
        pending = st->timer.inflight;
        for (i = 0; i < st->count; i++) pending |= st->entries[i].op.inflight;
        if (pending) wait_completions(s, 0);
    } while (pending);
    return Qnil;
}

/*
 *  call-seq: io_select(readables, writables = nil, exceptables = nil, timeout = nil) -> [readables, writables, exceptables] or nil
 *
 *  IO.select: one IORING_OP_POLL_ADD per descriptor (and an
 *  IORING_OP_TIMEOUT); when the first completes, the others are removed and
 *  every descriptor that was ready is returned, as IO.select does.
 *  Readables with buffered data are ready at once.
 */
static VALUE
scheduler_io_select(int argc, VALUE *argv, VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);
    VALUE sets[3] = {Qnil, Qnil, Qnil}, timeout = Qnil, result, tmp, ios;
    static const int masks[3] = {POLLIN, POLLOUT, POLLPRI};
    struct select_state st;
    long i, j, count = 0;
    int any = 0;

    rb_check_arity(argc, 1, 4);
    for (i = 0; i < argc && i < 3; i++) sets[i] = argv[i];
    if (argc > 3) timeout = argv[3];
    /* Private copies: #to_io below runs arbitrary code, which may change
     * the caller's arrays; the entries are sized from these. */
    for (i = 0; i < 3; i++) {
        if (!NIL_P(sets[i])) {
            sets[i] = rb_ary_dup(rb_convert_type(sets[i], T_ARRAY, "Array", "to_ary"));
            count += RARRAY_LEN(sets[i]);
        }
    }
    memset(&st, 0, sizeof(st));
    st.s = s;
    st.fiber = rb_fiber_current();
    st.timed = !NIL_P(timeout);
    if (st.timed) st.deadline = deadline_of(timeout);
    ios = rb_ary_new_capa(count);
    st.entries = ALLOCV_N(struct select_entry, tmp, count > 0 ? count : 1);
    memset(st.entries, 0, sizeof(struct select_entry) * (count > 0 ? count : 1));

    /* Convert and check every element before anything is queued: a
     * TypeError or IOError then leaves nothing in flight. */
    for (i = 0; i < 3; i++) {
        if (NIL_P(sets[i])) continue;
        for (j = 0; j < RARRAY_LEN(sets[i]) && st.count < count; j++) {
            VALUE io = rb_io_get_io(RARRAY_AREF(sets[i], j));
            struct select_entry *e;
            rb_io_t *fptr;

            RB_IO_POINTER(io, fptr);
            rb_io_check_closed(fptr);
            rb_ary_push(ios, io);
            e = &st.entries[st.count++];
            e->io = RARRAY_AREF(sets[i], j);
            e->fd = rb_io_descriptor(io);
            e->set = (int)i;
            e->state = &st;
            if (i == 0 && rb_io_read_pending(fptr)) {
                e->op.result = POLLIN;      /* buffered: ready now */
                e->buffered = 1;
                st.ready = 1;
            }
        }
    }
    rb_ensure(select_wait, (VALUE)&st, select_ensure, (VALUE)&st);

    result = rb_ary_new_from_args(3, rb_ary_new(), rb_ary_new(), rb_ary_new());
    for (i = 0; i < st.count; i++) {
        struct select_entry *e = &st.entries[i];
        if (e->op.result > 0 && (e->op.result & (masks[e->set] | POLLERR | POLLHUP | POLLNVAL))) {
            rb_ary_push(RARRAY_AREF(result, e->set), e->io);
            any = 1;
        }
    }
    ALLOCV_END(tmp);
    RB_GC_GUARD(ios);
    RB_GC_GUARD(sets[0]);
    RB_GC_GUARD(sets[1]);
    RB_GC_GUARD(sets[2]);
    return any ? result : Qnil;
}

/* ---- process_wait ---- */

static VALUE
status_wait_i(RB_BLOCK_CALL_FUNC_ARGLIST(_, data))
{
    const VALUE *args = (const VALUE *)data;
    return rb_funcall(cProcessStatus, id_wait, 2, args[0], args[1]);
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
static VALUE
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

/*
 *  call-seq: fiber(*arguments) { |*arguments| ... } -> fiber
 *
 *  Fiber.schedule: a new non-blocking fiber, started at once.  The current
 *  fiber goes back to the ready queue (unless it is the loop fiber, which
 *  gets control back when the new fiber waits or finishes).
 */
static VALUE
scheduler_fiber(int argc, VALUE *argv, VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);
    VALUE options = rb_hash_new(), fiber, current = rb_fiber_current();

    rb_need_block();
    rb_hash_aset(options, ID2SYM(rb_intern("blocking")), Qfalse);
    fiber = rb_funcall_with_block_kw(cFiber, rb_intern("new"), 1, &options,
                                     rb_block_proc(), RB_PASS_KEYWORDS);
    if (current != s->loop_fiber) ready_push(s, current);
    rb_fiber_transfer(fiber, argc, argv);
    return fiber;
}

static void
atfork_child(void)
{
    fork_generation++;
}

void
Init_uring(void)
{
    VALUE mUring = rb_define_module_under(rb_cIO, "Uring");

    id_wait = rb_intern_const("wait");
    id_locked_p = rb_intern_const("locked?");
    cProcessStatus = rb_path2class("Process::Status");
    cFiber = rb_path2class("Fiber");
    pthread_atfork(NULL, NULL, atfork_child);
    {
        /* The VM's own word on M:N threads, as `ruby -v` prints it. */
        VALUE description = rb_const_get(rb_cObject, rb_intern("RUBY_DESCRIPTION"));
        mn_threads = strstr(StringValueCStr(description), " +MN ") != NULL;
    }

    cScheduler = rb_define_class_under(mUring, "Scheduler", rb_cObject);
    rb_define_alloc_func(cScheduler, scheduler_alloc);
    rb_define_method(cScheduler, "initialize", scheduler_initialize, 0);
    rb_define_method(cScheduler, "run", scheduler_run, 0);
    rb_define_method(cScheduler, "close", scheduler_close, 0);
    rb_define_method(cScheduler, "scheduler_close", scheduler_close, 0);
    rb_define_method(cScheduler, "closed?", scheduler_closed_p, 0);
    rb_define_method(cScheduler, "io_wait", scheduler_io_wait, 3);
    rb_define_method(cScheduler, "io_read", scheduler_io_read, 4);
    rb_define_method(cScheduler, "io_write", scheduler_io_write, 4);
    rb_define_method(cScheduler, "io_pread", scheduler_io_pread, 5);
    rb_define_method(cScheduler, "io_pwrite", scheduler_io_pwrite, 5);
    rb_define_method(cScheduler, "io_close", scheduler_io_close, 1);
    rb_define_method(cScheduler, "io_splice", scheduler_io_splice, 5);
    rb_define_method(cScheduler, "fiber_interrupt", scheduler_fiber_interrupt, 2);
    rb_define_method(cScheduler, "process_fork", scheduler_process_fork, 0);
    rb_define_method(cScheduler, "block", scheduler_block, -1);
    rb_define_method(cScheduler, "unblock", scheduler_unblock, 2);
    rb_define_method(cScheduler, "kernel_sleep", scheduler_kernel_sleep, -1);
    rb_define_method(cScheduler, "timeout_after", scheduler_timeout_after, 3);
    rb_define_method(cScheduler, "process_wait", scheduler_process_wait, 2);
    rb_define_method(cScheduler, "fiber", scheduler_fiber, -1);
    rb_define_method(cScheduler, "io_select", scheduler_io_select, -1);

    /* The hooks that hand work to threads are written in Ruby. */
    rb_require("io/uring/scheduler");
}
