/*
 * Bug::IOUring: a window on the per-thread io_uring helper (io_uring.c), for
 * tests.  Not part of any public API.
 */
#include "ruby/ruby.h"
#include "ruby/io.h"
#include "ruby/thread.h"
#include "internal/io_uring.h"

#include <errno.h>

#if USE_IO_URING
static struct io_uring *
ring_or_raise(void)
{
    struct io_uring *ring = rb_io_uring_get();

    if (!ring) rb_sys_fail("io_uring");
    return ring;
}

static int
opcode_of(VALUE name)
{
    static const struct { const char *name; int opcode; } ops[] = {
        {"nop", IORING_OP_NOP}, {"read", IORING_OP_READ}, {"write", IORING_OP_WRITE},
        {"splice", IORING_OP_SPLICE}, {"close", IORING_OP_CLOSE},
        {"waitid", IORING_OP_WAITID}, {"send_zc", IORING_OP_SEND_ZC},
    };
    const char *s = rb_id2name(rb_sym2id(name));
    size_t i;

    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(s, ops[i].name) == 0) return ops[i].opcode;
    }
    rb_raise(rb_eArgError, "unknown io_uring operation: %s", s);
}

/* Bug::IOUring.nop(count = 1) -> [result, ...] */
static VALUE
ring_nop(int argc, VALUE *argv, VALUE self)
{
    int count = rb_check_arity(argc, 0, 1) ? NUM2INT(argv[0]) : 1;
    struct io_uring *ring;
    struct rb_io_uring_op *ops;
    VALUE results, tmp;
    int i, ret;

    if (count < 1) rb_raise(rb_eArgError, "count must be positive");
    ring = ring_or_raise();
    /* Prepared entries must not be abandoned: check for room first. */
    if ((unsigned int)count > io_uring_sq_space_left(ring)) {
        rb_io_uring_release(ring);
        rb_raise(rb_eArgError, "more operations than the ring holds");
    }
    ops = ALLOCV_N(struct rb_io_uring_op, tmp, count);
    for (i = 0; i < count; i++) {
        io_uring_prep_nop(rb_io_uring_sqe(ring, &ops[i]));
    }
    ret = rb_io_uring_wait(ring, ops, count);
    /* Nothing is in flight now, and what follows may raise. */
    rb_io_uring_release(ring);
    if (ret < 0 && ret != -EINTR) rb_syserr_fail(-ret, "rb_io_uring_wait");
    results = rb_ary_new_capa(count);
    for (i = 0; i < count; i++) rb_ary_push(results, INT2NUM(ops[i].result));
    ALLOCV_END(tmp);
    if (ret == -EINTR) rb_thread_check_ints();     /* cancelled ones say -ECANCELED */
    return results;
}

/* Bug::IOUring.read(io, length) -> String or nil at end of file */
static VALUE
ring_read(VALUE self, VALUE io, VALUE length)
{
    int fd = rb_io_descriptor(io);
    long len = NUM2LONG(length);
    struct rb_io_uring_op op;
    VALUE tmp, str;
    char *buf;
    int ret;

    if (len <= 0) rb_raise(rb_eArgError, "length must be positive");
    buf = ALLOCV(tmp, len);     /* not moved by GC while the kernel writes */
    for (;;) {
        /* Held for one wait: the interrupt check below may raise. */
        struct io_uring *ring = ring_or_raise();
        struct io_uring_sqe *sqe = rb_io_uring_sqe(ring, &op);

        io_uring_prep_read(sqe, fd, buf, (unsigned int)len, (__u64)-1);
        ret = rb_io_uring_wait(ring, &op, 1);
        rb_io_uring_release(ring);
        if (ret == -EINTR && (op.result == -ECANCELED || op.result == -EINTR)) {
            rb_thread_check_ints();     /* may raise: nothing is in flight */
            continue;
        }
        if (ret < 0 && ret != -EINTR) rb_syserr_fail(-ret, "rb_io_uring_wait");
        break;
    }
    if (op.result < 0) rb_syserr_fail(-op.result, "read");
    str = op.result == 0 ? Qnil : rb_str_new(buf, op.result);
    ALLOCV_END(tmp);
    return str;
}

/* Bug::IOUring.ring_fd -> Integer: the calling thread's ring descriptor */
static VALUE
ring_fd(VALUE self)
{
    struct io_uring *ring = ring_or_raise();
    int fd = ring->ring_fd;

    rb_io_uring_release(ring);
    return INT2NUM(fd);
}

static VALUE
ring_hold_body(VALUE ring)
{
    return rb_yield(Qnil);
}

static VALUE
ring_hold_release(VALUE ring)
{
    rb_io_uring_release((struct io_uring *)ring);
    return Qnil;
}

/* Bug::IOUring.hold { ... } -> the block's value, run with the calling
 * thread's ring held, as IO.copy_stream holds it during a copy */
static VALUE
ring_hold(VALUE self)
{
    struct io_uring *ring = ring_or_raise();

    return rb_ensure(ring_hold_body, (VALUE)ring, ring_hold_release, (VALUE)ring);
}

/* Bug::IOUring.supported?(:splice) -> true or false */
static VALUE
ring_supported_p(VALUE self, VALUE name)
{
    return rb_io_uring_supported_p(opcode_of(name)) ? Qtrue : Qfalse;
}
#endif

/* Bug::IOUring.available? -> true if this thread can have a ring */
static VALUE
ring_available_p(VALUE self)
{
    struct io_uring *ring = rb_io_uring_get();

    if (!ring) return Qfalse;
    rb_io_uring_release(ring);
    return Qtrue;
}

void
Init_io_uring(void)
{
    VALUE mBug = rb_define_module("Bug");
    VALUE m = rb_define_module_under(mBug, "IOUring");

    rb_define_const(m, "COMPILED", USE_IO_URING ? Qtrue : Qfalse);
    rb_define_module_function(m, "available?", ring_available_p, 0);
#if USE_IO_URING
    rb_define_module_function(m, "supported?", ring_supported_p, 1);
    rb_define_module_function(m, "nop", ring_nop, -1);
    rb_define_module_function(m, "read", ring_read, 2);
    rb_define_module_function(m, "ring_fd", ring_fd, 0);
    rb_define_module_function(m, "hold", ring_hold, 0);
#endif
}
