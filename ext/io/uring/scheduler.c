/**********************************************************************

  io/uring/scheduler.c - IO::Uring::Scheduler, a Fiber::Scheduler on
                         io_uring(7): the class.

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

  This file owns the scheduler's data (marking, freeing), its ring's
  setup and release, the thread that owns it, what a forked child does
  with it, and Init_uring, which defines every method.  uring.h lists the
  other files and what each owns.

**********************************************************************/

#include "uring.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <unistd.h>

#define RING_ENTRIES 1024
#define COMPLETION_ENTRIES 16384
/* How long the SQPOLL thread of an M:N ring polls after the last
 * submission before it sleeps (see ring_setup). */
#define SQPOLL_IDLE_MS 2

static VALUE cScheduler;
VALUE cProcessStatus, cFiber;

/* Ruby threads run on M:N native threads (RUBY_MN_THREADS=1): see
 * ring_setup. */
static int mn_threads;

volatile unsigned long fork_generation;

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
    for (i = 0; i < s->fixed_high; i++) {
        if (s->fixed[i].buffer) rb_gc_mark(s->fixed[i].buffer);
    }
    if (s->blocked) rb_mark_set(s->blocked);
    if (s->woken) rb_mark_set(s->woken);
}

void
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
    pbuf_release(s);
    ring_release(s);
    if (s->blocked) st_free_table(s->blocked);
    if (s->woken) st_free_table(s->woken);
    ruby_xfree(s->ready);
    ruby_xfree(s->held);
    ruby_xfree(s->pipes);
    ruby_xfree(s->hints);
    ruby_xfree(s->fixed);
    ruby_xfree(s);
}

static size_t
scheduler_memsize(const void *ptr)
{
    const struct uring_scheduler *s = ptr;
    return sizeof(*s) + s->ready_capa * sizeof(struct ready_entry) +
        s->nhints * sizeof(struct fd_hint);
}

const rb_data_type_t scheduler_type = {
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

/* RUBY_IO_URING=0 makes the scheduler behave as if the kernel refused
 * io_uring (as kernel.io_uring_disabled=2 does), to test what falls back
 * without the privilege to change the sysctl. */
static int
io_uring_refused_by_env(void)
{
    const char *env = getenv("RUBY_IO_URING");

    return env && strcmp(env, "0") == 0;
}

/* RUBY_IO_URING_COREDUMP=1: core files include the rings, for a debugger
 * (tools/gdb) to read their queues.  They are shared mappings of an
 * anonymous inode, which the kernel dumps only with bit 3 of
 * /proc/self/coredump_filter (file-backed shared mappings), off by default.
 * Set once per process (the filter is inherited by children); a filter that
 * cannot be changed is warned about, not fatal. */
static void
ring_coredump_include(void)
{
    static int done;
    const char *env = getenv("RUBY_IO_URING_COREDUMP");
    char text[32];
    unsigned long filter;
    ssize_t n;
    int fd, e = 0;

    if (done || !env || strcmp(env, "1") != 0) return;
    done = 1;
    fd = open("/proc/self/coredump_filter", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        e = errno;
    }
    else {
        n = read(fd, text, sizeof(text) - 1);
        if (n <= 0) {
            e = n < 0 ? errno : EIO;
        }
        else {
            text[n] = '\0';
            filter = strtoul(text, NULL, 16);
            if (!(filter & 0x8)) {
                n = snprintf(text, sizeof(text), "0x%lx\n", filter | 0x8);
                ssize_t w = pwrite(fd, text, (size_t)n, 0);
                if (w != n) e = w < 0 ? errno : EIO;
            }
        }
        close(fd);
    }
    if (e) rb_warn("RUBY_IO_URING_COREDUMP: /proc/self/coredump_filter: %s", strerror(e));
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
    if (io_uring_refused_by_env()) {
        rb_syserr_fail(EPERM, "io_uring_queue_init_params");
    }
    /* With M:N threads a Ruby thread moves between native threads: a
     * single-issuer ring refuses (EEXIST) every other one, and a request
     * belongs to the thread that submitted it, which the VM may retire
     * (master does) while it is pending: the kernel then ends it with
     * -ECANCELED.  A submission thread of the kernel's own (SQPOLL), which
     * lives as long as the ring, owns the requests instead.  Its short
     * idle time bounds what it spins after the last submission (one such
     * thread per scheduler).  Before 5.11 an SQPOLL ring takes registered
     * files only; there, and wherever SQPOLL is refused (privileges, thread
     * limits), the plain ring below. */
    if (mn_threads) {
        memset(&params, 0, sizeof(params));
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_R_DISABLED |
                       IORING_SETUP_SQPOLL;
        params.cq_entries = COMPLETION_ENTRIES;
        params.sq_thread_idle = SQPOLL_IDLE_MS;
        ret = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &params);
        if (ret == 0 && !(params.features & IORING_FEAT_SQPOLL_NONFIXED)) {
            io_uring_queue_exit(&s->ring);
            ret = -EINVAL;
        }
        if (ret < 0) ret = -EINVAL;
    }
    else {
        ret = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &params);
    }
    if (ret == -EINVAL) {       /* kernels before 6.1, or M:N threads */
        memset(&params, 0, sizeof(params));
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_R_DISABLED;
        params.cq_entries = COMPLETION_ENTRIES;
        ret = io_uring_queue_init_params(RING_ENTRIES, &s->ring, &params);
    }
    if (ret < 0) rb_syserr_fail(-ret, "io_uring_queue_init_params");
    s->ring_live = 1;
    URING_ASAN_UNPOISON(s->ring.sq.ring_ptr, s->ring.sq.ring_sz);
    URING_ASAN_UNPOISON(s->ring.cq.ring_ptr, s->ring.cq.ring_sz);
    URING_ASAN_UNPOISON(s->ring.sq.sqes, (size_t)s->ring.sq.ring_entries *
                        ((s->ring.flags & IORING_SETUP_SQE128) ? 128 : 64));

    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        int e = errno;
        ring_release(s);
        rb_syserr_fail(e, "eventfd");
    }
    s->generation = fork_generation;
    ring_coredump_include();
}

/* The first thread to use the scheduler owns it; the fiber it runs in then
 * (normally the thread's root fiber, which sets the scheduler) runs the
 * loop. */
static void
scheduler_bind(struct uring_scheduler *s)
{
    int ret = io_uring_enable_rings(&s->ring);

    if (ret < 0) rb_syserr_fail(-ret, "io_uring_enable_rings");
    splice_files_setup(s);
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
void
scheduler_forget_parent(struct uring_scheduler *s)
{
    s->ring_live = 0;           /* the mapping goes with munmap below */
    io_uring_queue_exit(&s->ring);
    close(s->wake_fd);
    s->wake_fd = -1;
    pipes_release(s);           /* the child's copies of the descriptors */
    fixed_release(s, 0);        /* the child's copies of the buffers: unlocked */
    pbuf_release(s);            /* ring_live is off: only unmapped */
    s->inflight_ops.next = s->inflight_ops.prev = &s->inflight_ops;
    s->inflight = 0;
    s->hooks.next = s->hooks.prev = &s->hooks;
    s->interrupts_pending = 0;
    s->interrupted = 0;
    s->wake_op.inflight = 0;
    s->ready_head = s->ready_len = 0;
    s->held_len = 0;
    st_clear(s->blocked);
    st_clear(s->woken);
}

/* A scheduler used in a forked child without #process_fork (a ruby without
 * the hook): start over with a ring of our own. */
void
scheduler_after_fork(struct uring_scheduler *s)
{
    scheduler_forget_parent(s);
    ring_setup(s);
    scheduler_bind(s);
}

struct uring_scheduler *
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
    return s;
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
    rb_define_method(cScheduler, "run", scheduler_run_m, 0);
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
    rb_define_method(cScheduler, "fiber", scheduler_fiber, -1);
    rb_define_method(cScheduler, "io_select", scheduler_io_select, -1);
    Init_uring_socket(cScheduler);
    Init_uring_buffers(cScheduler);
    Init_uring_pbuf(cScheduler);
    Init_uring_process(cScheduler);

    /* The hooks that hand work to threads are written in Ruby. */
    rb_require("io/uring/scheduler");
}
