/**********************************************************************

  io/uring/socket.c - the socket hooks of IO::Uring::Scheduler.

  #socket_recv (IORING_OP_RECV, or IORING_OP_RECVMSG when the caller
  wants the sender's address), #socket_send (IORING_OP_SEND, or
  IORING_OP_SENDMSG to an address), #socket_accept (IORING_OP_ACCEPT),
  #socket_connect (IORING_OP_CONNECT) and #socket_shutdown (shutdown(2),
  which never waits).  Each is one operation on the ring, with a linked
  timeout when the socket has an IO#timeout.

**********************************************************************/

#include "uring.h"

#include <sys/socket.h>

struct sock_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    struct uring_op op;
    int fd;
    int events;                 /* RUBY_IO_READABLE or WRITABLE: for a timeout's message */
    int timed;
    struct __kernel_timespec deadline;
    /* the operation's own arguments */
    VALUE buffer;
    int buffer_locked;
    void *base;
    size_t size;
    int flags;
    VALUE address;              /* recv, accept: filled; send, connect: read */
    union {
        struct sockaddr sa;
        struct sockaddr_storage ss;
    } addr;
    socklen_t addrlen;
    struct msghdr msg;
    struct iovec iov;
    int accepting;              /* an accept was queued ... */
    int accepted;               /* ... and its descriptor handed to the caller */
    int transfer;               /* recv, send: what moved is kept across interrupts */
};

static void
sock_begin(struct sock_args *a, VALUE self, VALUE socket, int events, const char *name)
{
    VALUE timeout;

    rb_io_t *fptr;

    memset(a, 0, sizeof(*a));
    a->s = scheduler_get(self);
    RB_IO_POINTER(socket, fptr);
    rb_io_check_closed(fptr);
    a->fd = rb_io_descriptor(socket);
    a->events = events;
    a->buffer = Qnil;
    a->address = Qnil;
    timeout = rb_io_timeout(socket);
    a->timed = !NIL_P(timeout);
    if (a->timed) a->deadline = deadline_of(timeout);
    a->hook.name = name;
}

/* A submission entry for the hook's operation; with IO#timeout, the
 * operation and its linked timeout go in one submission. */
static struct io_uring_sqe *
sock_sqe(struct sock_args *a)
{
    if (a->timed) sq_reserve(a->s, 2);
    hook_check(&a->hook);
    return op_sqe(a->s, &a->op);
}

struct sock_wait_args {
    struct sock_args *a;
    struct io_uring_sqe *sqe;
};

static VALUE
sock_wait_body(VALUE ptr)
{
    struct sock_wait_args *w = (struct sock_wait_args *)ptr;
    struct sock_args *a = w->a;

    return INT2NUM(hook_wait_until(a->s, &a->hook, &a->op, w->sqe, a->timed ? &a->deadline : NULL));
}

/* hook_wait_until() for a receive or a send.  Interrupted after the
 * kernel moved bytes (the cancellation came too late), it returns the
 * count if the caller keeps it and raises the exception afterwards
 * (rb_fiber_scheduler_transfer_call()); otherwise the bytes are lost with
 * the exception, as a read(2)'s are under Thread#raise. */
static int32_t
sock_transfer_wait(struct sock_args *a, struct io_uring_sqe *sqe)
{
    struct sock_wait_args w = {a, sqe};
    int state;
    VALUE result = rb_protect(sock_wait_body, (VALUE)&w, &state);

    if (state) {
#ifdef HAVE_RB_FIBER_SCHEDULER_TRANSFER_CALL
        if (!a->op.inflight && a->op.result > 0 &&
            rb_fiber_scheduler_transfer_interrupted(rb_errinfo())) {
            rb_set_errinfo(Qnil);
            a->hook.op = NULL;
            a->hook.nops = 0;
            return a->op.result;
        }
#endif
        rb_jump_tag(state);
    }
    return NUM2INT(result);
}

static int32_t
sock_wait(struct sock_args *a, struct io_uring_sqe *sqe)
{
    int32_t result = (a->transfer ? sock_transfer_wait(a, sqe) :
                      hook_wait_until(a->s, &a->hook, &a->op, sqe, a->timed ? &a->deadline : NULL));

    if (result == -ECANCELED && a->timed) {
        rb_raise(rb_eIOTimeoutError, "Timed out waiting for IO to become %s!",
                 a->events == RUBY_IO_READABLE ? "readable" : "writable");
    }
    return result;
}

static VALUE
sock_leave(VALUE ptr)
{
    struct sock_args *a = (struct sock_args *)ptr;

    hook_leave(a->s, &a->hook);
    if (a->buffer_locked) rb_io_buffer_unlock(a->buffer);
    /* An accept that completed while its fiber was leaving (an interrupt,
     * a timeout): nobody will own the connection. */
    if (a->accepting && !a->accepted && !a->op.inflight && a->op.result >= 0) {
        close(a->op.result);
    }
    return Qnil;
}

static VALUE
sock_run(struct sock_args *a, VALUE (*body)(VALUE))
{
    hook_enter(a->s, &a->hook, a->hook.name, a->fd);
    return rb_ensure(body, (VALUE)a, sock_leave, (VALUE)a);
}

/* The buffer's memory, locked while the kernel may use it (the callers'
 * wrappers come locked: those are left so). */
static void
sock_buffer(struct sock_args *a, VALUE buffer, int writing)
{
    a->buffer = buffer;
    if (writing) {
        rb_io_buffer_get_bytes_for_writing(buffer, &a->base, &a->size);
    }
    else {
        const void *base;
        rb_io_buffer_get_bytes_for_reading(buffer, &base, &a->size);
        a->base = (void *)base;
    }
    if (a->size > 0x7ffff000) a->size = 0x7ffff000;
    a->buffer_locked = uring_buffer_lock(buffer);
}

/* A message header over the buffer, with room for (or holding) an
 * address of `namelen` bytes in a->addr. */
static struct msghdr *
sock_msghdr(struct sock_args *a, socklen_t namelen)
{
    a->iov.iov_base = a->base;
    a->iov.iov_len = a->size;
    a->msg.msg_name = &a->addr;
    a->msg.msg_namelen = namelen;
    a->msg.msg_iov = &a->iov;
    a->msg.msg_iovlen = 1;
    return &a->msg;
}

static VALUE
recv_body(VALUE ptr)
{
    struct sock_args *a = (struct sock_args *)ptr;
    struct io_uring_sqe *sqe = sock_sqe(a);
    int32_t result;

    if (NIL_P(a->address)) {
        io_uring_prep_recv(sqe, a->fd, a->base, a->size, a->flags);
    }
    else {
        io_uring_prep_recvmsg(sqe, a->fd, sock_msghdr(a, sizeof(a->addr)), (unsigned)a->flags);
    }
    result = sock_wait(a, sqe);
    if (result >= 0 && !NIL_P(a->address)) {
        rb_str_resize(a->address, 0);
        rb_str_cat(a->address, (const char *)&a->addr, a->msg.msg_namelen);
    }
    return INT2NUM(result);
}

/*
 *  call-seq: socket_recv(socket, buffer, flags, from = nil) -> received length or -errno
 *
 *  Receives once from +socket+ into +buffer+ with IORING_OP_RECV, or
 *  IORING_OP_RECVMSG when +from+ is a String, which then receives the
 *  sender's packed address.  Raises IO::TimeoutError after the socket's
 *  IO#timeout.  Interrupted (Fiber#raise, #timeout_after, IO#close) after
 *  the kernel received, it returns the count if the caller keeps it
 *  (rb_fiber_scheduler_transfer_call()), which raises the exception.
 */
static VALUE
scheduler_socket_recv(int argc, VALUE *argv, VALUE self)
{
    struct sock_args a;
    VALUE socket, buffer, flags, from;

    rb_scan_args(argc, argv, "31", &socket, &buffer, &flags, &from);
    sock_begin(&a, self, socket, RUBY_IO_READABLE, "socket_recv");
    a.transfer = 1;
    a.flags = NUM2INT(flags);
    if (!NIL_P(from)) {
        StringValue(from);
        rb_str_modify(from);
        a.address = from;
    }
    sock_buffer(&a, buffer, 1);
    /* Nothing to receive into (an empty or freed buffer): 0 at once. */
    if (a.size == 0) {
        if (a.buffer_locked) rb_io_buffer_unlock(buffer);
        return INT2FIX(0);
    }
    return sock_run(&a, recv_body);
}

static VALUE
send_body(VALUE ptr)
{
    struct sock_args *a = (struct sock_args *)ptr;
    struct io_uring_sqe *sqe = sock_sqe(a);

    if (a->addrlen == 0) {
        io_uring_prep_send(sqe, a->fd, a->base, a->size, a->flags);
    }
    else {
        io_uring_prep_sendmsg(sqe, a->fd, sock_msghdr(a, a->addrlen), (unsigned)a->flags);
    }
    return INT2NUM(sock_wait(a, sqe));
}

/* A packed address into a->addr: the kernel reads it after the hook has
 * let go of the String. */
static void
sock_address(struct sock_args *a, VALUE address)
{
    StringValue(address);
    if (RSTRING_LEN(address) > (long)sizeof(a->addr)) {
        rb_raise(rb_eArgError, "too long socket address");
    }
    memcpy(&a->addr, RSTRING_PTR(address), RSTRING_LEN(address));
    a->addrlen = (socklen_t)RSTRING_LEN(address);
}

/*
 *  call-seq: socket_send(socket, buffer, flags, destination = nil) -> sent length or -errno
 *
 *  Sends +buffer+ once on +socket+ with IORING_OP_SEND, or
 *  IORING_OP_SENDMSG to the packed address +destination+.  Raises
 *  IO::TimeoutError after the socket's IO#timeout.  An interrupt after
 *  the send as for #socket_recv.
 */
static VALUE
scheduler_socket_send(int argc, VALUE *argv, VALUE self)
{
    struct sock_args a;
    VALUE socket, buffer, flags, destination;

    rb_scan_args(argc, argv, "31", &socket, &buffer, &flags, &destination);
    sock_begin(&a, self, socket, RUBY_IO_WRITABLE, "socket_send");
    a.transfer = 1;
    a.flags = NUM2INT(flags);
    if (!NIL_P(destination)) sock_address(&a, destination);
    sock_buffer(&a, buffer, 0);
    return sock_run(&a, send_body);
}

static VALUE
connect_body(VALUE ptr)
{
    struct sock_args *a = (struct sock_args *)ptr;
    struct io_uring_sqe *sqe = sock_sqe(a);

    io_uring_prep_connect(sqe, a->fd, &a->addr.sa, a->addrlen);
    return INT2NUM(sock_wait(a, sqe));
}

/*
 *  call-seq: socket_connect(socket, address) -> 0 or -errno
 *
 *  Connects +socket+ to the packed +address+ with IORING_OP_CONNECT.
 *  Raises IO::TimeoutError after the socket's IO#timeout.
 */
static VALUE
scheduler_socket_connect(VALUE self, VALUE socket, VALUE address)
{
    struct sock_args a;

    sock_begin(&a, self, socket, RUBY_IO_WRITABLE, "socket_connect");
    sock_address(&a, address);
    return sock_run(&a, connect_body);
}

static VALUE
accept_body(VALUE ptr)
{
    struct sock_args *a = (struct sock_args *)ptr;
    struct io_uring_sqe *sqe = sock_sqe(a);
    int32_t result;

    a->addrlen = sizeof(a->addr);
    a->accepting = 1;
    io_uring_prep_accept(sqe, a->fd, &a->addr.sa, &a->addrlen, SOCK_CLOEXEC | SOCK_NONBLOCK);
    result = sock_wait(a, sqe);
    if (result >= 0) {
        socklen_t len = a->addrlen < sizeof(a->addr) ? a->addrlen : (socklen_t)sizeof(a->addr);
        rb_str_resize(a->address, 0);
        rb_str_cat(a->address, (const char *)&a->addr, len);
        a->accepted = 1;
    }
    return INT2NUM(result);
}

/*
 *  call-seq: socket_accept(socket, address) -> descriptor or -errno
 *
 *  Accepts a connection on the listening +socket+ with IORING_OP_ACCEPT
 *  (SOCK_CLOEXEC | SOCK_NONBLOCK); +address+ receives the peer's packed
 *  address.  Raises IO::TimeoutError after the socket's IO#timeout.  A
 *  connection accepted while the fiber is being interrupted is closed.
 */
static VALUE
scheduler_socket_accept(VALUE self, VALUE socket, VALUE address)
{
    struct sock_args a;

    sock_begin(&a, self, socket, RUBY_IO_READABLE, "socket_accept");
    StringValue(address);
    rb_str_modify(address);
    a.address = address;
    return sock_run(&a, accept_body);
}

/*
 *  call-seq: socket_shutdown(socket, how) -> 0 or -errno
 *
 *  shutdown(2), at once: it never waits, and a ring operation would only
 *  add a turn of the loop.
 */
static VALUE
scheduler_socket_shutdown(VALUE self, VALUE socket, VALUE how)
{
    rb_io_t *fptr;

    scheduler_get(self);
    RB_IO_POINTER(socket, fptr);
    rb_io_check_closed(fptr);
    if (shutdown(rb_io_descriptor(socket), NUM2INT(how)) < 0) return INT2NUM(-errno);
    return INT2FIX(0);
}

void
Init_uring_socket(VALUE cScheduler)
{
    rb_define_method(cScheduler, "socket_recv", scheduler_socket_recv, -1);
    rb_define_method(cScheduler, "socket_send", scheduler_socket_send, -1);
    rb_define_method(cScheduler, "socket_connect", scheduler_socket_connect, 2);
    rb_define_method(cScheduler, "socket_accept", scheduler_socket_accept, 2);
    rb_define_method(cScheduler, "socket_shutdown", scheduler_socket_shutdown, 2);
}
