/**********************************************************************

  io/uring/time.c - time and blocking hooks of IO::Uring::Scheduler.

  Deadlines (absolute, on CLOCK_MONOTONIC), #kernel_sleep,
  #timeout_after (IORING_OP_TIMEOUT), #block and #unblock (any thread).

**********************************************************************/

#include "uring.h"

#include <math.h>
#include <time.h>

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
struct __kernel_timespec
deadline_of(VALUE duration)
{
    return deadline_after(rb_time_timespec_interval(duration));
}

/* A duration Ruby hands on without checking (Timeout's, Queue#pop's):
 * negative ones are 0, too large ones (and NaN) never come. */
static struct __kernel_timespec
deadline_clamped(VALUE duration)
{
    struct timespec interval = {0, 0};
    double d = NUM2DBL(duration);

    if (d > 1e12 || isnan(d)) interval.tv_sec = (time_t)1 << 40;
    else if (d > 0) interval = rb_time_timespec_interval(duration);
    return deadline_after(interval);
}

struct block_wait {
    struct uring_scheduler *s;
    VALUE fiber;
    int timed;                  /* with a timer until `deadline` */
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

    if (w->timed) {
        w->timer.complete = block_timer_complete;
        io_uring_prep_timeout(op_sqe(w->s, &w->timer), &w->deadline, 0, IORING_TIMEOUT_ABS);
    }
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
    /* A bad timeout raises before the fiber is in `blocked` (an entry left
     * there would keep the loop running); the timer is queued under
     * block_ensure, which takes both back. */
    if (!NIL_P(timeout)) {
        w.deadline = deadline_clamped(timeout);
        w.timed = 1;
    }
    if (st_delete(s->woken, (st_data_t *)&w.fiber, NULL)) {
        return Qtrue;           /* unblocked already: see scheduler_unblock */
    }
    st_insert(s->blocked, (st_data_t)w.fiber, (st_data_t)&w);
    return rb_ensure(block_yield, (VALUE)&w, block_ensure, (VALUE)&w);
}

/*
 *  call-seq: block(blocker, timeout = nil) -> true or false
 *
 *  Suspends the current fiber until #unblock is called for it (true) or
 *  +timeout+ seconds pass (false), with an IORING_OP_TIMEOUT.
 */
VALUE
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
VALUE
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
VALUE
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
VALUE
scheduler_timeout_after(VALUE self, VALUE duration, VALUE klass, VALUE message)
{
    struct timeout_args t;

    memset(&t, 0, sizeof(t));
    t.s = scheduler_get(self);
    /* raised in the fiber later, from the loop: checked now, as Fiber#raise
     * would (in the loop, it would end the scheduler) */
    if (!rb_respond_to(klass, rb_intern("exception"))) {
        rb_raise(rb_eTypeError, "exception class/object expected");
    }
    t.fiber = rb_fiber_current();
    t.klass = klass;
    t.message = message;
    t.duration = duration;
    t.deadline = deadline_clamped(duration);
    t.timer.complete = timeout_complete;
    io_uring_prep_timeout(op_sqe(t.s, &t.timer), &t.deadline, 0, IORING_TIMEOUT_ABS);
    return rb_ensure(timeout_yield, (VALUE)&t, timeout_ensure, (VALUE)&t);
}
