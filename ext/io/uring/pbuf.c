/**********************************************************************

  io/uring/pbuf.c - reads into buffers the kernel picks:
  #read_pooled, #read_pool, #read_pool_stats.

  A fiber in IO#readpartial holds its buffer (a String of the length it
  asked for) for as long as it waits: 10,000 connections waiting for
  16 KiB each hold 156 MiB that no byte has reached.  #read_pooled waits
  with no buffer at all: the read is submitted with IOSQE_BUFFER_SELECT,
  and when data comes the kernel takes a buffer from the scheduler's
  pool, a provided-buffer ring (IORING_REGISTER_PBUF_RING); the fiber
  copies the bytes into a new String and the buffer goes back.  With
  IOU_PBUF_RING_INC (Linux 6.12) a buffer is consumed incrementally: each
  read takes only the bytes it got, so small messages share a buffer.

  Accounting, per buffer: `consumed` (where the kernel's next read into it
  starts, with IOU_PBUF_RING_INC), `pending` (completions whose fibers have
  not copied out yet), and `done` (the kernel let go of it: a completion
  without IORING_CQE_F_BUF_MORE).  It goes back to the ring when it is done
  and nothing is pending.  Completions are accounted when they are reaped,
  in the kernel's order, also for a fiber that left (an interrupt):
  nothing is lost from the pool.

**********************************************************************/

#include "uring.h"

#include <poll.h>
#include <sys/mman.h>

#define PBUF_GROUP 0                /* the scheduler's one buffer group */
#define PBUF_COUNT 64
#define PBUF_SIZE (64 * 1024)

struct pbuf_pool {
    struct io_uring_buf_ring *br;
    char *base;
    unsigned int count, size;
    int incremental;
    unsigned int *consumed;
    unsigned int *pending;
    unsigned char *done;
    unsigned long reads, fallbacks;
};

struct pooled_read {
    struct uring_scheduler *s;
    struct io_hook hook;
    struct uring_op op;
    int fd, socket;
    unsigned int length;
    int bid;                    /* the buffer the bytes are in, or -1 */
    const char *data;
    int abandoned;              /* the fiber left: release at completion */
    VALUE result;
};

static void
pool_put(struct pbuf_pool *p, unsigned int bid)
{
    p->consumed[bid] = 0;
    p->done[bid] = 0;
    io_uring_buf_ring_add(p->br, p->base + (size_t)bid * p->size, p->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(p->count), 0);
    io_uring_buf_ring_advance(p->br, 1);
}

static void
pool_release(struct pbuf_pool *p, unsigned int bid)
{
    if (p->pending[bid] > 0) p->pending[bid]--;
    if (p->pending[bid] == 0 && p->done[bid]) pool_put(p, bid);
}

/* Before the ring is released (#close, freeing): the buffer ring is
 * unregistered and unmapped, the buffers unmapped.  In a forked child
 * (the ring is the parent's, and ring_live is off already) the child's
 * copies of both are only unmapped. */
void
pbuf_release(struct uring_scheduler *s)
{
    struct pbuf_pool *p = s->pbuf;

    if (!p) return;
    if (!s->ring_live || s->generation != fork_generation ||
        io_uring_free_buf_ring(&s->ring, p->br, p->count, PBUF_GROUP) < 0) {
        munmap(p->br, (size_t)p->count * sizeof(struct io_uring_buf));
    }
    munmap(p->base, (size_t)p->count * p->size);
    ruby_xfree(p->consumed);
    ruby_xfree(p->pending);
    ruby_xfree(p->done);
    ruby_xfree(p);
    s->pbuf = NULL;
}

static struct pbuf_pool *
pool_setup(struct uring_scheduler *s, unsigned int count, unsigned int size)
{
    struct pbuf_pool *p = ZALLOC(struct pbuf_pool);
    unsigned int i;
    int err = 0;

    p->count = count;
    p->size = size;
    p->base = mmap(NULL, (size_t)count * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->base == MAP_FAILED) {
        int e = errno;
        ruby_xfree(p);
        rb_syserr_fail(e, "mmap");
    }
    p->br = io_uring_setup_buf_ring(&s->ring, count, PBUF_GROUP, IOU_PBUF_RING_INC, &err);
    p->incremental = p->br != NULL;
    if (!p->br) p->br = io_uring_setup_buf_ring(&s->ring, count, PBUF_GROUP, 0, &err);
    if (!p->br) {
        munmap(p->base, (size_t)count * size);
        ruby_xfree(p);
        rb_syserr_fail(-err, "io_uring_setup_buf_ring");
    }
    URING_ASAN_UNPOISON(p->br, (size_t)count * sizeof(struct io_uring_buf));
    p->consumed = ZALLOC_N(unsigned int, count);
    p->pending = ZALLOC_N(unsigned int, count);
    p->done = ZALLOC_N(unsigned char, count);
    for (i = 0; i < count; i++) {
        io_uring_buf_ring_add(p->br, p->base + (size_t)i * size, size, (unsigned short)i,
                              io_uring_buf_ring_mask(count), (int)i);
    }
    io_uring_buf_ring_advance(p->br, (int)count);
    s->pbuf = p;
    return p;
}

/* At reaping, in the kernel's order: where the bytes are, and the
 * buffer's accounting. */
static void
pooled_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct pooled_read *r = op->arg;
    struct pbuf_pool *p = s->pbuf;

    r->bid = -1;
    if (p && (op->cqe_flags & IORING_CQE_F_BUFFER)) {
        unsigned int bid = op->cqe_flags >> IORING_CQE_BUFFER_SHIFT;

        if (bid < p->count) {
            r->bid = (int)bid;
            r->data = p->base + (size_t)bid * p->size + p->consumed[bid];
            if (op->result > 0 && p->incremental) p->consumed[bid] += (unsigned int)op->result;
            p->pending[bid]++;
            if (!p->incremental || !(op->cqe_flags & IORING_CQE_F_BUF_MORE)) p->done[bid] = 1;
            if (r->abandoned) {
                pool_release(p, bid);
                r->bid = -1;
            }
        }
    }
    if (!r->abandoned) ready_push(s, op->fiber);
}

static VALUE
pooled_body(VALUE ptr)
{
    struct pooled_read *r = (struct pooled_read *)ptr;
    struct uring_scheduler *s = r->s;
    struct pbuf_pool *p = s->pbuf;
    struct io_uring_sqe *sqe;
    int32_t result;

    for (;;) {
        hook_check(&r->hook);
        sqe = op_sqe(s, &r->op);
        if (r->socket) io_uring_prep_recv(sqe, r->fd, NULL, r->length, 0);
        else io_uring_prep_read(sqe, r->fd, NULL, r->length, (uint64_t)-1);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = PBUF_GROUP;
        r->op.complete = pooled_complete;
        r->op.arg = r;
        r->bid = -1;
        r->hook.op = &r->op;
        r->hook.nops = 1;
        while (r->op.inflight) suspend(s);
        r->hook.op = NULL;
        r->hook.nops = 0;
        result = r->op.result;
        if (r->bid >= 0) {
            r->result = result > 0 ? rb_str_new(r->data, result) : Qnil;
            pool_release(p, (unsigned int)r->bid);
            r->bid = -1;
            hook_check(&r->hook);
            p->reads++;
            return r->result;
        }
        hook_check(&r->hook);
        if (result == -ENOTSOCK && r->socket) {
            r->socket = 0;
            continue;
        }
        if (result == 0) return Qnil;
        if (result == -ENOBUFS) {
            /* Every buffer is taken: wait for data, then read into a
             * String of our own. */
            VALUE str = rb_str_buf_new(r->length);
            ssize_t n;

            p->fallbacks++;
            hook_poll(s, &r->hook, r->fd, POLLIN, NULL);
            n = read(r->fd, RSTRING_PTR(str), r->length);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (n < 0) rb_sys_fail("read");
            if (n == 0) return Qnil;
            rb_str_set_len(str, n);
            return str;
        }
        if (result == -EINTR || result == -EAGAIN) continue;
        rb_syserr_fail(-result, "read");
    }
}

static VALUE pooled_leave(VALUE ptr);

static VALUE
pooled_run(VALUE ptr)
{
    struct pooled_read *r = (struct pooled_read *)ptr;

    hook_enter(r->s, &r->hook, "read_pooled", r->fd);
    return rb_ensure(pooled_body, ptr, pooled_leave, ptr);
}

static VALUE
pooled_leave(VALUE ptr)
{
    struct pooled_read *r = (struct pooled_read *)ptr;

    if (r->op.inflight) {
        /* Interrupted: the completion accounts for (and returns) the
         * buffer the kernel may have taken. */
        r->abandoned = 1;
        op_cancel_and_reap(r->s, &r->op);
    }
    else if (r->bid >= 0 && r->s->pbuf) {
        pool_release(r->s->pbuf, (unsigned int)r->bid);   /* raised before copying */
    }
    hook_leave(r->s, &r->hook);
    return Qnil;
}

/*
 *  call-seq: read_pooled(io, maxlen = nil) -> string or nil
 *
 *  Reads what +io+ (a socket or a pipe) has, up to +maxlen+ bytes (and at
 *  most the pool's buffer size, the default), waiting until it has
 *  something, like IO#readpartial; returns a new binary String, or +nil+ at
 *  end of file.  While the fiber waits it holds no buffer: the kernel takes
 *  one from the scheduler's pool (see #read_pool) when the data arrives.
 *  When every buffer is taken, the read waits for data and reads into a
 *  String of its own.  IO#close of +io+ interrupts it with IOError, as it
 *  does IO#readpartial.  Bytes already buffered in +io+ (by IO#gets, say)
 *  are not seen: use it on IOs read only with it, or with
 *  IO#read_nonblock and #readpartial.
 */
static VALUE
scheduler_read_pooled(int argc, VALUE *argv, VALUE self)
{
    struct uring_scheduler *s = scheduler_get(self);
    struct pooled_read r;
    VALUE io, maxlen;
    rb_io_t *fptr;

    rb_scan_args(argc, argv, "11", &io, &maxlen);
    io = rb_io_get_io(io);
    RB_IO_POINTER(io, fptr);
    rb_io_check_char_readable(fptr);
    if (!s->pbuf) pool_setup(s, PBUF_COUNT, PBUF_SIZE);
    memset(&r, 0, sizeof(r));
    r.s = s;
    r.fd = rb_io_descriptor(io);
    r.socket = (rb_io_mode(io) & FMODE_DUPLEX) != 0;
    r.length = s->pbuf->size;
    if (!NIL_P(maxlen)) {
        long n = NUM2LONG(maxlen);
        if (n < 0) rb_raise(rb_eArgError, "negative length %ld given", n);
        if (n == 0) return rb_str_new(0, 0);
        if ((unsigned long)n < r.length) r.length = (unsigned int)n;
    }
    r.bid = -1;
    r.result = Qnil;
#ifdef HAVE_RB_FIBER_SCHEDULER_IO_OPERATION
    /* A user of the descriptor, as the hooks are: IO#close interrupts it. */
    return rb_fiber_scheduler_io_operation(io, pooled_run, (VALUE)&r);
#else
    return pooled_run((VALUE)&r);
#endif
}

/*
 *  call-seq: read_pool(count, size) -> self
 *
 *  Sets up the pool of #read_pooled: +count+ buffers (a power of two, at
 *  most 32,768) of +size+ bytes each (a multiple of 4,096).  Without it,
 *  the first #read_pooled sets up 64 buffers of 64 KiB.  Raises if the
 *  pool exists already.
 */
static VALUE
scheduler_read_pool(VALUE self, VALUE vcount, VALUE vsize)
{
    struct uring_scheduler *s = scheduler_get(self);
    long count = NUM2LONG(vcount), size = NUM2LONG(vsize);

    if (s->pbuf) rb_raise(rb_eRuntimeError, "the read pool is set up already");
    if (count < 1 || count > 32768 || (count & (count - 1))) {
        rb_raise(rb_eArgError, "count must be a power of two from 1 to 32768");
    }
    if (size < 4096 || size % 4096 || size > (1L << 24)) {
        rb_raise(rb_eArgError, "size must be a multiple of 4096 up to 16 MiB");
    }
    pool_setup(s, (unsigned int)count, (unsigned int)size);
    return self;
}

/*
 *  call-seq: read_pool_stats -> hash or nil
 *
 *  The pool of #read_pooled, once set up: its +count+ and +size+, whether
 *  buffers are consumed +incremental+ly (IOU_PBUF_RING_INC), how many
 *  buffers are +in_use+ now, +reads+ served from it, and +fallbacks+ (reads
 *  made with a String of their own because every buffer was taken).
 */
static VALUE
scheduler_read_pool_stats(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    struct pbuf_pool *p = s->pbuf;
    VALUE stats;
    unsigned int i, in_use = 0;

    if (!p) return Qnil;
    for (i = 0; i < p->count; i++) {
        if (p->pending[i] || p->consumed[i] || p->done[i]) in_use++;
    }
    stats = rb_hash_new();
    rb_hash_aset(stats, ID2SYM(rb_intern("count")), UINT2NUM(p->count));
    rb_hash_aset(stats, ID2SYM(rb_intern("size")), UINT2NUM(p->size));
    rb_hash_aset(stats, ID2SYM(rb_intern("incremental")), p->incremental ? Qtrue : Qfalse);
    rb_hash_aset(stats, ID2SYM(rb_intern("in_use")), UINT2NUM(in_use));
    rb_hash_aset(stats, ID2SYM(rb_intern("reads")), ULONG2NUM(p->reads));
    rb_hash_aset(stats, ID2SYM(rb_intern("fallbacks")), ULONG2NUM(p->fallbacks));
    return stats;
}

void
Init_uring_pbuf(VALUE cScheduler)
{
    rb_define_method(cScheduler, "read_pooled", scheduler_read_pooled, -1);
    rb_define_method(cScheduler, "read_pool", scheduler_read_pool, 2);
    rb_define_method(cScheduler, "read_pool_stats", scheduler_read_pool_stats, 0);
}
