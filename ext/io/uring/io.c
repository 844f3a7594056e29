/**********************************************************************

  io/uring/io.c - stream I/O hooks of IO::Uring::Scheduler.

  #io_wait (IORING_OP_POLL_ADD with a linked timeout), #io_read,
  #io_write, #io_pread and #io_pwrite (IORING_OP_READ/WRITE, RECV/SEND on
  sockets, straight into the IO::Buffer, after an inline try for files
  and devices: inline.c), and #io_select (a poll per descriptor and a
  timer).

**********************************************************************/

#include "uring.h"

#include <poll.h>

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

    if (a->timed) sq_reserve(s, 2);
    hook_check(&a->hook);
    sqe = op_sqe(s, &op);
    io_uring_prep_poll_add(sqe, a->fd, a->mask);
    result = hook_wait_until(s, &a->hook, &op, sqe, a->timed ? &a->deadline : NULL);
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
    struct wait_args *a = (struct wait_args *)ptr;
    hook_leave(a->s, &a->hook);
    return Qnil;
}

/*
 *  call-seq: io_wait(io, events, timeout) -> events or false
 *
 *  Waits with IORING_OP_POLL_ADD (and a linked timeout) until +io+ is ready
 *  for some of +events+; returns those, or false on timeout.  A +nil+
 *  timeout is +io+'s IO#timeout, as for a wait without a scheduler
 *  (rb_io_wait() hands the scheduler +nil+ unresolved).
 */
VALUE
scheduler_io_wait(VALUE self, VALUE io, VALUE events, VALUE timeout)
{
    struct wait_args a;

    a.s = scheduler_get(self);
    a.fd = rb_io_descriptor(io);
    a.mask = NUM2INT(events);
    if (NIL_P(timeout)) timeout = rb_io_timeout(io);
    a.timed = !NIL_P(timeout);
    if (a.timed) a.deadline = deadline_of(timeout);
    hook_enter(a.s, &a.hook, "io_wait", a.fd);
    return rb_ensure(io_wait_poll, (VALUE)&a, io_wait_leave, (VALUE)&a);
}

struct buffer_args {
    VALUE buffer;
    int locked;
};

static void
buffer_lock(struct buffer_args *b)
{
    b->locked = uring_buffer_lock(b->buffer);
}

struct io_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    struct buffer_args b;
    enum io_direction dir;
    int fd;
    size_t length;              /* at least this much, unless EOF */
    size_t offset;              /* in the buffer */
    off_t from;                 /* file offset, or -1: the file position */
    int socket;                 /* IORING_OP_RECV/SEND (see io_socket_p) */
    size_t total;               /* transferred so far (inline) */
    char *base;                 /* the buffer's memory ... */
    size_t size;                /* ... and size (io_buffer_span) */
    int nofixed;                /* a fixed-buffer operation was refused */
    int timed;                  /* IO#timeout: each operation's deadline */
    struct __kernel_timespec deadline;
};

/* An operation of an IO with IO#timeout whose deadline came first: what a
 * blocking read or write of that IO raises. */
static void
io_deadline_check(int32_t result)
{
    if (result == -ECANCELED) rb_raise(rb_eIOTimeoutError, "Blocking operation timed out!");
}

/* The buffer's memory and size, once per call: nothing can move or resize
 * the buffer until the hook returns (the GVL, then the buffer's lock).
 * Raises for a buffer the transfer cannot use (read-only for a read,
 * freed) or an offset past its end. */
static void
io_buffer_span(struct io_args *a)
{
    void *base;

    if (a->dir == IO_READ) {
        rb_io_buffer_get_bytes_for_writing(a->b.buffer, &base, &a->size);
    }
    else {
        const void *cbase;
        rb_io_buffer_get_bytes_for_reading(a->b.buffer, &cbase, &a->size);
        base = (void *)cbase;
    }
    a->base = base;
    /* IO::Buffer#read and #write's checks, with their messages */
    if (a->offset > a->size || a->length > a->size - a->offset) {
        rb_raise(rb_eArgError, "Specified offset+length is bigger than the buffer size!");
    }
}

/* A length or offset of a hook's arguments: IO::Buffer's checks. */
static size_t
io_size_arg(VALUE value, const char *what)
{
    long n = NUM2LONG(value);

    if (n < 0) rb_raise(rb_eArgError, "%s can't be negative!", what);
    return (size_t)n;
}

static size_t
io_chunk(size_t size, size_t offset)
{
    return size - offset > 0x7ffff000 ? 0x7ffff000 : size - offset;
}

/*
 * The transfer without the ring, where inline.c says the kernel answers at
 * once: the result, or Qundef when the ring is to do the rest (a->total and
 * a->offset say how far it got).  Nothing is held or registered here: the
 * fiber does not leave the hook, and IO#close cannot release the
 * descriptor while the hook runs.
 */
static VALUE
io_inline(struct io_args *a)
{
    for (;;) {
        off_t at = a->from < 0 ? -1 : a->from + (off_t)a->total;
        ssize_t r = inline_transfer(a->s, a->fd, a->socket, a->dir, a->base + a->offset,
                                    io_chunk(a->size, a->offset), at);

        if (r == INLINE_RING) return Qundef;
        if (r < 0) return rb_fiber_scheduler_io_result(-1, (int)-r);
        if (r == 0) return SIZET2NUM(a->total);
        a->total += r;
        a->offset += r;
        if (a->total >= a->length || a->offset >= a->size) return SIZET2NUM(a->total);
    }
}

static VALUE
io_transfer(VALUE ptr)
{
    struct io_args *a = (struct io_args *)ptr;
    struct uring_scheduler *s = a->s;
    size_t size = a->size, total = a->total;

    for (;;) {
        struct uring_op op = {0};
        struct io_uring_sqe *sqe;
        char *p = a->base + a->offset;
        unsigned int n = (unsigned int)io_chunk(size, a->offset);
        uint64_t at = a->from < 0 ? (uint64_t)-1 : (uint64_t)(a->from + total);
        int slot = a->nofixed ? -1 : fixed_slot(s, p, n);
        int32_t result;

        if (a->timed) sq_reserve(s, 2);
        hook_check(&a->hook);
        sqe = op_sqe(s, &op);
        if (slot >= 0) {
            /* A registered buffer (buffers.c): files, pipes and sockets
             * alike; the offset of a stream is ignored, -1 is a file's
             * position. */
            if (a->dir == IO_READ) io_uring_prep_read_fixed(sqe, a->fd, p, n, at, slot);
            else io_uring_prep_write_fixed(sqe, a->fd, p, n, at, slot);
            s->fixed_ops++;
        }
        else if (a->socket) {
            if (a->dir == IO_READ) io_uring_prep_recv(sqe, a->fd, p, n, 0);
            else io_uring_prep_send(sqe, a->fd, p, n, 0);
        }
        else if (a->dir == IO_READ) {
            io_uring_prep_read(sqe, a->fd, p, n, at);
        }
        else {
            io_uring_prep_write(sqe, a->fd, p, n, at);
        }
        result = hook_wait_until(s, &a->hook, &op, sqe, a->timed ? &a->deadline : NULL);
        if (a->timed) io_deadline_check(result);
        if (slot >= 0 && (result == -EFAULT || result == -EINVAL || result == -EOPNOTSUPP)) {
            a->nofixed = 1;             /* refused: the ordinary operation */
            s->fixed_ops--;
            s->fixed_refusals++;
            continue;
        }
        if (result == -ENOTSOCK && a->socket) {
            a->socket = 0;              /* a terminal, a popen: read(2) */
            continue;
        }

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
            int32_t ready = hook_poll(s, &a->hook, a->fd, a->dir == IO_READ ? POLLIN : POLLOUT,
                                      a->timed ? &a->deadline : NULL);
            if (a->timed) io_deadline_check(ready);
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
    hook_leave(a->s, &a->hook);
    if (a->b.locked) rb_io_buffer_unlock(a->b.buffer);
    return Qnil;
}

/*
 * A socket's reads and writes go through IORING_OP_RECV/SEND, the socket
 * layer's own operations: they skip the file layer (its position lock and
 * read_iter), about 8 % off a socketpair ping-pong on Linux 6.18, where
 * both kinds wait for data inside the kernel with one operation.  Sockets
 * are the IOs whose FMODE_DUPLEX is set; a duplex IO that is not one (a
 * terminal, a popen pipe) answers -ENOTSOCK once per call and is then read
 * with IORING_OP_READ.  Positioned reads and writes (#io_pread) are
 * IORING_OP_READ/WRITE, which give a socket's ESPIPE.
 */
static int
io_socket_p(VALUE io)
{
    return RB_TYPE_P(io, T_FILE) && RFILE(io)->fptr && (rb_io_mode(io) & FMODE_DUPLEX);
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
    a.length = io_size_arg(length, "Length");
    a.offset = io_size_arg(offset, "Offset");
    a.from = NIL_P(from) ? -1 : NUM2OFFT(from);
    /* pread(2)'s answer; an IORING_OP_READ would take -1 for the position */
    if (!NIL_P(from) && a.from < 0) return rb_fiber_scheduler_io_result(-1, EINVAL);
    a.socket = a.from < 0 && io_socket_p(io);
    a.total = 0;
    a.nofixed = 0;
    a.timed = 0;
    if (RB_TYPE_P(io, T_FILE)) {
        VALUE timeout = rb_io_timeout(io);
        if ((a.timed = !NIL_P(timeout))) a.deadline = deadline_of(timeout);
    }
    io_buffer_span(&a);
    {
        VALUE result = io_inline(&a);
        if (!RB_UNDEF_P(result)) return result;
    }
    /* IORING_OP_READ/WRITE take a stream's offset for "the current
     * position" where pread(2) and pwrite(2) refuse it: a pipe's or a
     * socket's ESPIPE, as without a scheduler. */
    if (a.from >= 0 && lseek(a.fd, 0, SEEK_CUR) < 0 && errno == ESPIPE) {
        return rb_fiber_scheduler_io_result(-1, ESPIPE);
    }
    buffer_lock(&a.b);
    hook_enter(a.s, &a.hook, dir == IO_READ ? (a.from < 0 ? "io_read" : "io_pread")
                                            : (a.from < 0 ? "io_write" : "io_pwrite"), a.fd);
    return rb_ensure(io_transfer, (VALUE)&a, io_unlock, (VALUE)&a);
}

/*
 *  call-seq: io_read(io, buffer, length, offset) -> read length or -errno
 *
 *  Reads at least +length+ bytes (unless end of file) from +io+ into
 *  +buffer+ at +offset+ with IORING_OP_READ (IORING_OP_RECV for a
 *  socket), straight into the buffer's memory.  A file or device is
 *  first read with preadv2(2) and RWF_NOWAIT, which completes at once
 *  from the page cache, without a switch to the loop.  Returns the
 *  number of bytes read, or a negated errno.  With an IO#timeout, each
 *  operation has a linked timeout, and IO::TimeoutError is raised when it
 *  expires, as without a scheduler.
 */
VALUE
scheduler_io_read(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset)
{
    return io_operation(self, IO_READ, io, buffer, Qnil, length, offset);
}

/*
 *  call-seq: io_write(io, buffer, length, offset) -> written length or -errno
 *
 *  Writes at least +length+ bytes of +buffer+ from +offset+ to +io+ with
 *  IORING_OP_WRITE (IORING_OP_SEND for a socket); to a file or device,
 *  first with pwritev2(2) and RWF_NOWAIT, as #io_read.
 */
VALUE
scheduler_io_write(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset)
{
    return io_operation(self, IO_WRITE, io, buffer, Qnil, length, offset);
}

/*
 *  call-seq: io_pread(io, buffer, from, length, offset) -> read length or -errno
 *
 *  Like #io_read, at file offset +from+, leaving the file position alone
 *  (IORING_OP_READ); -ESPIPE for a pipe or a socket, as pread(2).
 */
VALUE
scheduler_io_pread(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset)
{
    return io_operation(self, IO_READ, io, buffer, from, length, offset);
}

/*
 *  call-seq: io_pwrite(io, buffer, from, length, offset) -> written length or -errno
 *
 *  Like #io_write, at file offset +from+, leaving the file position alone
 *  (IORING_OP_WRITE); -ESPIPE for a pipe or a socket, as pwrite(2).
 */
VALUE
scheduler_io_pwrite(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset)
{
    return io_operation(self, IO_WRITE, io, buffer, from, length, offset);
}

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
VALUE
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
