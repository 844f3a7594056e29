/**********************************************************************

  io/uring/loop.c - the event loop of IO::Uring::Scheduler.

  The ready queue (fibers to resume, timeouts to raise), submission and
  reaping of completions, wake-ups from other threads (an eventfd read on
  the ring), and the loop fiber: #run, #close and #fiber
  (Fiber.schedule).

**********************************************************************/

#include "uring.h"

void
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

void
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
void
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

/* Hold back the raise `e` until its fiber next waits (see suspend). */
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

/* Raise what was held back for the current fiber (see suspend). */
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

/* Make a queued entry a NOP, keeping its links and its operation: it
 * completes (with 0) without doing anything. */
static void
sqe_disarm(struct io_uring_sqe *sqe)
{
    void *op = (void *)(uintptr_t)sqe->user_data;
    unsigned char links = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);

    io_uring_prep_nop(sqe);
    sqe->flags |= links;
    io_uring_sqe_set_data(sqe, op);
}

/* If `op` is still queued, not handed to the kernel yet, disarm it (see
 * sqe_disarm) and return 1: cancelling it then costs nothing, and nothing
 * it would have done (reading bytes, say) happens.  The operations linked
 * behind it go too: a NOP succeeds, and they would run. */
int
sq_disarm(struct uring_scheduler *s, struct uring_op *op)
{
    struct io_uring_sq *sq = &s->ring.sq;
    unsigned int i;

    if (op->keep) return 0;
    for (i = sq->sqe_head; i != sq->sqe_tail; i++) {
        struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
        if ((void *)(uintptr_t)sqe->user_data != op) continue;
        for (;;) {
            int linked = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);
            sqe_disarm(sqe);
            if (!linked || ++i == sq->sqe_tail) return 1;
            sqe = &sq->sqes[i & sq->ring_mask];
        }
    }
    return 0;
}

/* Whether `op` belongs to a hook #fiber_interrupt has marked. */
static int
op_interrupted_p(struct uring_scheduler *s, struct uring_op *op)
{
    struct io_hook *h;
    int i;

    for (h = s->hooks.next; h != &s->hooks; h = h->next) {
        if (NIL_P(h->interrupt)) continue;
        for (i = 0; i < h->nops; i++) {
            if (&h->op[i] == op) return 1;
        }
    }
    return 0;
}

/* Before a submission, over the entries queued since the last one (from
 * sq.sqe_head to sq.sqe_tail): record in each operation what it is (its
 * opcode, descriptor and deadline), for a debugger to read while it is in
 * flight, and disarm those of interrupted hooks. */
void
sq_note(struct uring_scheduler *s)
{
    struct io_uring_sq *sq = &s->ring.sq;
    unsigned int i;

    for (i = sq->sqe_head; i != sq->sqe_tail; i++) {
        struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
        struct uring_op *op = (struct uring_op *)(uintptr_t)sqe->user_data;

        if (!op || op == &s->wake_op) continue;
        /* Queued by a hook that IO#close, from another thread, has
         * interrupted since: that close did not wait for the fiber, and the
         * descriptor number may already be another file's.  Nothing may
         * reach it: the fiber raises the interrupt. */
        if (s->interrupted > 0 && op_interrupted_p(s, op)) sqe_disarm(sqe);
        op->opcode = sqe->opcode;
        op->fd = (sqe->flags & IOSQE_FIXED_FILE) ? -1 : sqe->fd;
        if (sqe->opcode == IORING_OP_TIMEOUT && (sqe->timeout_flags & IORING_TIMEOUT_ABS)) {
            op->deadline = (const struct __kernel_timespec *)(uintptr_t)sqe->addr;
        }
    }
}

/* After io_uring_enter(2) (through `call`) returned `ret`: fail if the
 * ring is broken, then collect what has completed.  The others are
 * transient: a signal, a full completion queue, a timeout. */
static void
entered(struct uring_scheduler *s, int ret, const char *call)
{
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
        ring_fail(s, -ret, call);
    }
    reap(s);
}

/* Hand what is queued to the kernel, and collect what has completed. */
static void
ring_submit(struct uring_scheduler *s)
{
    sq_note(s);
    entered(s, io_uring_submit(&s->ring), "io_uring_submit");
}

/* The queue is full: submit.  On an SQPOLL ring (M:N threads) that only
 * publishes the entries, and room comes when the kernel's thread has taken
 * them: wait for it rather than spin. */
static void
sq_make_room(struct uring_scheduler *s)
{
    ring_submit(s);
    if ((s->ring.flags & IORING_SETUP_SQPOLL) && io_uring_sq_space_left(&s->ring) == 0) {
        entered(s, io_uring_sqring_wait(&s->ring), "io_uring_sqring_wait");
    }
}

struct io_uring_sqe *
sqe_get_slow(struct uring_scheduler *s)
{
    struct io_uring_sqe *sqe;

    while (!(sqe = io_uring_get_sqe(&s->ring))) sq_make_room(s);
    return sqe;
}

/* Room for `n` entries, so that a chain of linked operations is never split
 * across two submissions. */
void
sq_reserve(struct uring_scheduler *s, unsigned int n)
{
    while (io_uring_sq_space_left(&s->ring) < n) sq_make_room(s);
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

void
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
        op->cqe_flags = cqe->flags;
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
void
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
void
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
void
wait_completions(struct uring_scheduler *s, int interruptible)
{
    struct enter_args a = {s, 0, 0};

    sq_note(s);
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
    entered(s, a.result, "io_uring_enter");
}

/* Submit what is queued and collect what has completed, without waiting. */
static void
poll_completions(struct uring_scheduler *s)
{
    sq_note(s);
    entered(s, io_uring_submit_and_get_events(&s->ring), "io_uring_enter");
}

static void run_once(struct uring_scheduler *s);

/* Let the loop run until something makes the current fiber ready. */
void
suspend(struct uring_scheduler *s)
{
    /* A timeout's raise held back behind a completion of this fiber (see
     * run_once) is raised at its next wait, before the fiber waits: what
     * it has queued for that wait is still disarmed by the cancellation
     * (sq_disarm), so no read can take bytes the exception would lose. */
    if (s->held_len > 0) held_raise(s);
    if (rb_fiber_current() == s->loop_fiber) {
        run_once(s);            /* nobody to transfer to: be the loop */
    }
    else {
        rb_fiber_transfer(s->loop_fiber, 0, NULL);
    }
}

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

    s->inline_count = 0;
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

/* The loop until no fiber is ready, waiting or blocked (#close). */
VALUE
scheduler_run(VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);

    while (scheduler_busy_p(s)) {
        run_once(s);
    }
    return Qnil;
}

/*
 *  call-seq: run -> nil
 *
 *  Runs the event loop until no fiber is ready, waiting or blocked.
 *  Called by #close (at the end of the thread that set the scheduler).
 *  Only the loop fiber (the fiber that first used the scheduler, normally
 *  its thread's root fiber) may run it: a fiber of the scheduler's would
 *  wait for itself, so it gets a RuntimeError.
 */
VALUE
scheduler_run_m(VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);

    if (rb_fiber_current() != s->loop_fiber) {
        rb_raise(rb_eRuntimeError, "IO::Uring::Scheduler#run called from a fiber other than its loop fiber");
    }
    return scheduler_run(self);
}

/* The loop ended in an exception (Thread#kill of the scheduler's thread,
 * a signal) with operations in flight: cancel them all and wait for the
 * kernel to let go, now that their fibers are still alive; and let go of
 * the files their copies registered.  Left to
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
    splice_files_drop(s);
    return Qnil;
}

static VALUE
scheduler_release(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (s->closed) return Qnil;
    s->closed = 1;
    fixed_release(s, s->generation == fork_generation);
    pbuf_release(s);
    ring_release(s);
    return Qnil;
}

static VALUE
scheduler_close_workers(VALUE self)
{
    return rb_funcall(self, rb_intern("close_workers"), 0);
}

static VALUE
scheduler_close_finish(VALUE self)
{
    return rb_ensure(scheduler_close_workers, self, scheduler_release, self);
}

/* After the loop, however it ended: the kernel lets go first, then the
 * workers, the buffers and the ring are released, each whatever the step
 * before raised.  An exception out of the loop (Thread#kill while the
 * thread's end runs it) used to skip them, leaving the ring's
 * descriptors, the pipe pool and the worker threads to the GC. */
static VALUE
scheduler_close_rest(VALUE self)
{
    return rb_ensure(scheduler_cancel_all, self, scheduler_close_finish, self);
}

/*
 *  call-seq: close -> nil
 *
 *  Runs the event loop to completion, then releases the ring, its
 *  buffers and its worker threads, also when the loop ends in an exception
 *  (Thread#kill).  Using the scheduler afterwards raises RuntimeError.
 *  Also called as #scheduler_close by Fiber.set_scheduler and at thread
 *  exit.  Only the scheduler's thread may close it (ThreadError), or any
 *  thread once that thread has ended.
 */
VALUE
scheduler_close(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);

    if (s->closed) return Qnil;
    if (!NIL_P(s->thread) && s->thread != rb_thread_current() &&
        s->generation == fork_generation &&
        !RTEST(rb_funcall(s->thread, rb_intern("alive?"), 0))) {
        /* its thread has ended: no one can run the loop any more */
        scheduler_close_rest(self);
        return Qnil;
    }
    if (!NIL_P(s->thread) || s->generation != fork_generation) {
        /* from another thread: ThreadError, and nothing is released */
        scheduler_get(self);
        rb_ensure(scheduler_run, self, scheduler_close_rest, self);
    }
    else {
        scheduler_close_rest(self);
    }
    return Qnil;
}

/*
 *  call-seq: closed? -> true or false
 */
VALUE
scheduler_closed_p(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    return s->closed ? Qtrue : Qfalse;
}

/*
 *  call-seq: fiber(*arguments) { |*arguments| ... } -> fiber
 *
 *  Fiber.schedule: a new non-blocking fiber, started at once.  The current
 *  fiber goes back to the ready queue (unless it is the loop fiber, which
 *  gets control back when the new fiber waits or finishes).
 */
VALUE
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
