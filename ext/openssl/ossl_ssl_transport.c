/*
 * 'OpenSSL for Ruby' project
 * This program is licensed under the same licence as Ruby.
 * (See the file 'COPYING'.)
 */
/*
 * The scheduler transport of SSLSocket.
 *
 * Stock SSLSocket hands its descriptor to libssl's socket BIO: libssl reads
 * and writes the socket itself, and a fiber scheduler only sees #io_wait.
 * When a scheduler with transfer hooks is current at #connect or #accept,
 * the socket gets this BIO instead.  Its callbacks never call Ruby and
 * never wait: they take ciphertext from a receive buffer and put it in a
 * send buffer, and ask libssl to retry when those are empty or full.
 * ossl_ssl.c moves the bytes between SSL_* calls (ossl_transport_fill(),
 * ossl_transport_flush()) with the scheduler's #socket_recv/#socket_send
 * (#io_read/#io_write for other descriptors), so one call receives several
 * records and one call sends what an SSL_write() produced.  Fibers switch
 * only between SSL_* calls, as with the socket BIO.
 *
 * The non-blocking methods and #stop use the descriptor directly
 * (OSSL_TRANSPORT_DIRECT) once staged bytes are used up, as the socket BIO
 * does, so their contract (:wait_readable and friends) is stock's.  Only
 * a blocking #sysread receives ahead of the record it needs; the
 * handshake receives what libssl asks for, so early data stays in the
 * kernel where IO.select sees it.
 *
 * One fill and one flush are in flight per socket at a time: a reader and
 * writers on other fibers run in full duplex, and a fiber that needs
 * input while another fills waits for that fill, then retries its call.
 */
#include "ossl.h"
#include "ossl_ssl_transport.h"

/* The transport (an OpenSSL/SSL/Transport object) or :fd, in a hidden
 * instance variable of the SSLSocket. */
static ID id_i_transport;

#if defined(HAVE_BIO_METH_NEW) && defined(HAVE_RB_FIBER_SCHEDULER_SOCKET_RECV_MEMORY) && !defined(_WIN32)
#define OSSL_SCHEDULER_TRANSPORT 1
#endif

#ifdef OSSL_SCHEDULER_TRANSPORT
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "ruby/fiber/scheduler.h"
#include "ruby/io/buffer.h"

/* One receive holds about four full records (16 KiB + 22 bytes each). */
#define TRANSPORT_BUFFER_SIZE (64 * 1024)
/* The largest record libssl writes: 16 KiB of data, expansion, header. */
#define TRANSPORT_RECORD_MAX (16 * 1024 + 2048 + 5)

struct ossl_transport {
    int fd;
    int socket;                 /* fd is a socket: #socket_recv/#socket_send */
    enum ossl_transport_mode mode;
    /* received ciphertext: [rhead, rtail) of rbuf */
    char *rbuf;
    size_t rhead, rtail;
    size_t ask;                 /* what libssl last asked for, staged empty */
    int filling;                /* a fill is in flight into rbuf */
    unsigned long fill_gen;     /* fills done */
    int eof;                    /* the peer closed: reads answer 0 */
    int broken;                 /* a transfer ended without its count */
    int rerr;                   /* errno of a failed fill, reported once */
    /* ciphertext to send: [0, wlen) of wbuf, wcap bytes */
    char *wbuf;
    size_t wcap;
    size_t wlen;
    size_t flushing;            /* bytes of wbuf a flush has in flight */
    /* A blocking SSL_write() by fiber `committer` took `committed` bytes
     * (staged), and its flush was interrupted: that fiber retries. */
    int committed;
    VALUE committer;
    VALUE fill_lock, flush_lock;
};

static ID id_i_scheduler_transport, id_i_context;
static ID id_socket_recv, id_socket_send, id_io_read, id_io_write;
static BIO_METHOD *transport_method;
static int transport_bio_type;
static int transport_enabled = 1;
static void (*transport_timed_out)(int events);

/* Raises ossl_ssl.c's IO::TimeoutError (see Init_ossl_ssl_transport()). */
static NORETURN(void transport_timeout(int events));

static void
transport_timeout(int events)
{
    if (transport_timed_out) transport_timed_out(events);
    /* not reached: the callback raises */
    rb_raise(rb_eIOTimeoutError, "Timed out waiting for IO to become %s!",
             events == RUBY_IO_WRITABLE ? "writable" : "readable");
}

static void
transport_mark(void *ptr)
{
    struct ossl_transport *t = ptr;

    rb_gc_mark(t->fill_lock);
    rb_gc_mark(t->flush_lock);
    rb_gc_mark(t->committer);
}

/* Only when the SSLSocket is unreachable: no fiber is inside a fill or a
 * flush of it (their frames hold it), so the kernel has let go. */
static void
transport_free(void *ptr)
{
    struct ossl_transport *t = ptr;

    free(t->rbuf);
    free(t->wbuf);
    ruby_xfree(t);
}

static size_t
transport_memsize(const void *ptr)
{
    const struct ossl_transport *t = ptr;

    return sizeof(*t) + (t->rbuf ? TRANSPORT_BUFFER_SIZE : 0) + (t->wbuf ? t->wcap : 0);
}

static const rb_data_type_t transport_type = {
    "OpenSSL/SSL/Transport",
    {transport_mark, transport_free, transport_memsize,},
    0, 0, RUBY_TYPED_FREE_IMMEDIATELY,
};

static struct ossl_transport *
transport_of(SSL *ssl)
{
    BIO *bio = SSL_get_rbio(ssl);

    if (!bio || BIO_method_type(bio) != transport_bio_type) return NULL;
    return BIO_get_data(bio);
}

/* ---- the BIO: never calls Ruby, never waits ---- */

static int
bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

/* The transport belongs to the SSLSocket (transport_free): nothing here. */
static int
bio_destroy(BIO *bio)
{
    BIO_set_data(bio, NULL);
    return 1;
}

static int
bio_read(BIO *bio, char *out, int len)
{
    struct ossl_transport *t = BIO_get_data(bio);
    size_t staged;

    BIO_clear_retry_flags(bio);
    if (!t || len <= 0) return 0;
    staged = t->rtail - t->rhead;
    if (staged > 0) {
        size_t n = staged < (size_t)len ? staged : (size_t)len;

        memcpy(out, t->rbuf + t->rhead, n);
        t->rhead += n;
        if (t->rhead == t->rtail && !t->filling) {
            /* drained: idle sockets keep no buffer */
            free(t->rbuf);
            t->rbuf = NULL;
            t->rhead = t->rtail = 0;
        }
        return (int)n;
    }
    if (t->rerr) {
        errno = t->rerr;
        t->rerr = 0;
        return -1;
    }
    if (t->eof) return 0;
    if (t->mode == OSSL_TRANSPORT_DIRECT) {
        ssize_t r;

        /* A fill in flight holds earlier bytes of the stream. */
        if (t->filling) {
            BIO_set_retry_read(bio);
            return -1;
        }
        r = t->socket ? recv(t->fd, out, len, MSG_DONTWAIT) : read(t->fd, out, len);
        if (r > 0) return (int)r;
        if (r == 0) {
            t->eof = 1;
            return 0;
        }
        if (BIO_sock_non_fatal_error(errno)) BIO_set_retry_read(bio);
        return -1;
    }
    t->ask = (size_t)len;
    BIO_set_retry_read(bio);
    return -1;
}

static ssize_t
direct_write(struct ossl_transport *t, const char *in, size_t len)
{
    return t->socket ? send(t->fd, in, len, MSG_DONTWAIT | MSG_NOSIGNAL) : write(t->fd, in, len);
}

static int
bio_write(BIO *bio, const char *in, int len)
{
    struct ossl_transport *t = BIO_get_data(bio);
    char *wbuf;
    size_t n;

    BIO_clear_retry_flags(bio);
    if (!t || len <= 0) return 0;
    if (t->mode == OSSL_TRANSPORT_DIRECT) {
        ssize_t r;

        if (t->flushing) {
            BIO_set_retry_write(bio);
            return -1;
        }
        /* Staged bytes go first, or the stream would be reordered. */
        while (t->wlen > 0) {
            r = direct_write(t, t->wbuf, t->wlen);
            if (r < 0) {
                if (BIO_sock_non_fatal_error(errno)) BIO_set_retry_write(bio);
                return -1;
            }
            memmove(t->wbuf, t->wbuf + r, t->wlen - r);
            t->wlen -= r;
        }
        r = direct_write(t, in, (size_t)len);
        if (r < 0 && BIO_sock_non_fatal_error(errno)) BIO_set_retry_write(bio);
        return (int)r;
    }
    /* A refused record would stay pending inside libssl, which then wants
     * the same SSL_write() retried: a writer on another fiber would get
     * "bad write retry".  Records are taken whole; the buffer grows if no
     * flush holds it (ossl_transport_reserve() keeps room for a record
     * before each blocking SSL_write()). */
    n = (size_t)len;
    if (t->wcap - t->wlen < n) {
        size_t cap = t->wcap ? t->wcap : TRANSPORT_BUFFER_SIZE;

        if (t->flushing) {
            BIO_set_retry_write(bio);
            return -1;
        }
        while (cap - t->wlen < n) cap *= 2;
        /* plain realloc: NoMemoryError must not unwind through libssl */
        if (!(wbuf = realloc(t->wbuf, cap))) return -1;
        t->wbuf = wbuf;
        t->wcap = cap;
    }
    memcpy(t->wbuf + t->wlen, in, n);
    t->wlen += n;
    return (int)n;
}

static long
bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct ossl_transport *t = BIO_get_data(bio);

    switch (cmd) {
      case BIO_CTRL_FLUSH:
        /* the caller flushes after the SSL_* call */
        return 1;
      case BIO_CTRL_EOF:
        /* 1 makes a close without close_notify "unexpected eof while
         * reading", as with the socket BIO */
        return t && t->eof && t->rhead == t->rtail;
      case BIO_CTRL_PENDING:
        return t ? (long)(t->rtail - t->rhead) : 0;
      case BIO_CTRL_WPENDING:
        return t ? (long)t->wlen : 0;
      default:
        /* kTLS, push/pop, ...: not supported */
        return 0;
    }
}

/* ---- attaching ---- */

static int
scheduler_usable(VALUE scheduler, int socket)
{
    if (socket && rb_respond_to(scheduler, id_socket_recv) && rb_respond_to(scheduler, id_socket_send))
        return 1;
    return rb_respond_to(scheduler, id_io_read) && rb_respond_to(scheduler, id_io_write);
}

/*
 * Gives SSLSocket `self` (not started) the transport if a fiber scheduler
 * with transfer hooks is current, neither the context
 * (SSLContext#scheduler_transport = false) nor the environment
 * (RUBY_OPENSSL_SCHEDULER_TRANSPORT=0) opts out, and kTLS is not asked for
 * (it needs the socket BIO).  Returns 0 (the caller uses SSL_set_fd()) or 1.
 */
int
ossl_transport_attach(VALUE self, SSL *ssl, VALUE io)
{
    VALUE scheduler = rb_fiber_scheduler_current(), obj, ctx;
    struct ossl_transport *t;
    struct stat st;
    BIO *bio;
    int fd;

    rb_ivar_set(self, id_i_transport, ID2SYM(rb_intern("fd")));
    if (!transport_enabled || NIL_P(scheduler)) return 0;
    ctx = rb_attr_get(self, id_i_context);
    if (!NIL_P(ctx) && rb_attr_get(ctx, id_i_scheduler_transport) == Qfalse) return 0;
#ifdef SSL_OP_ENABLE_KTLS
    if (SSL_get_options(ssl) & SSL_OP_ENABLE_KTLS) return 0;
#endif
    fd = rb_io_descriptor(io);
    if (fstat(fd, &st) < 0) return 0;
    if (!scheduler_usable(scheduler, S_ISSOCK(st.st_mode))) return 0;

    obj = TypedData_Make_Struct(0, struct ossl_transport, &transport_type, t);
    t->fd = fd;
    t->socket = S_ISSOCK(st.st_mode);
    t->mode = OSSL_TRANSPORT_STAGED;
    t->fill_lock = rb_mutex_new();
    t->flush_lock = rb_mutex_new();
    t->committer = Qnil;
    if (!(bio = BIO_new(transport_method)))
        ossl_raise(eOSSLError, "BIO_new");
    BIO_set_data(bio, t);
    SSL_set_bio(ssl, bio, bio);
    rb_ivar_set(self, id_i_transport, obj);
    return 1;
}

int
ossl_transport_p(SSL *ssl)
{
    return transport_of(ssl) != NULL;
}

/* Sends what is staged with write(2)/send(2) as far as the socket takes
 * it without waiting; errors are left for the next call to meet. */
static void
drain_nonblock(struct ossl_transport *t, VALUE io)
{
    ssize_t r;

    if (t->flushing || (!NIL_P(io) && RTEST(rb_io_closed_p(io)))) return;
    while (t->wlen > 0 && (r = direct_write(t, t->wbuf, t->wlen)) > 0) {
        memmove(t->wbuf, t->wbuf + r, t->wlen - r);
        t->wlen -= r;
    }
}

/* Before each SSL_* call: how the BIO serves it. */
void
ossl_transport_begin(SSL *ssl, enum ossl_transport_mode mode)
{
    struct ossl_transport *t = transport_of(ssl);

    if (!t) return;
    t->mode = mode;
    /* what a blocking call left staged goes first, as far as it can now */
    if (mode == OSSL_TRANSPORT_DIRECT && t->wlen > 0) drain_nonblock(t, Qnil);
}

/* ---- moving bytes ---- */

struct transfer {
    struct ossl_transport *t;
    VALUE scheduler, io, buffer, exception;
    char *base;
    size_t size;
    int write;
};

static VALUE
transfer_hook(VALUE ptr)
{
    struct transfer *x = (struct transfer *)ptr;

    if (x->t->socket && rb_respond_to(x->scheduler, x->write ? id_socket_send : id_socket_recv)) {
        return x->write ?
            rb_fiber_scheduler_socket_send_memory(x->scheduler, x->io, x->base, x->size, 0, Qnil) :
            rb_fiber_scheduler_socket_recv_memory(x->scheduler, x->io, x->base, x->size, 0, Qnil);
    }
    /* The wrapper is freed by transfer_release whatever the hook does. */
    x->buffer = rb_io_buffer_new(x->base, x->size, RB_IO_BUFFER_LOCKED | (x->write ? RB_IO_BUFFER_READONLY : 0));
    return x->write ?
        rb_fiber_scheduler_io_write(x->scheduler, x->io, x->buffer, 1, 0) :
        rb_fiber_scheduler_io_read(x->scheduler, x->io, x->buffer, 1, 0);
}

static VALUE
transfer_release(VALUE ptr)
{
    struct transfer *x = (struct transfer *)ptr;

    if (x->write) x->t->flushing = 0;
    else x->t->filling = 0;
    if (!NIL_P(x->buffer)) rb_io_buffer_free_locked(x->buffer);
    return Qnil;
}

static VALUE
transfer_protected(VALUE ptr)
{
    return rb_ensure(transfer_hook, ptr, transfer_release, ptr);
}

static VALUE
transfer_call(VALUE ptr)
{
    struct transfer *x = (struct transfer *)ptr;

#ifdef HAVE_RB_FIBER_SCHEDULER_TRANSFER_CALL
    return rb_fiber_scheduler_transfer_call(transfer_protected, ptr, &x->exception);
#else
    return transfer_protected(ptr);
#endif
}

/*
 * One transfer between the descriptor and [base, base + size): the
 * scheduler's hook if the current fiber has a scheduler that has one,
 * else one read(2)/write(2).  Returns the count, 0 (end of stream), or a
 * negated errno (-EAGAIN: wait and call again).  An interrupt that came
 * after the hook moved bytes is raised by the caller once they are kept
 * (*exception).
 */
static ssize_t
transfer(struct ossl_transport *t, VALUE io, char *base, size_t size, int write, VALUE *exception)
{
    struct transfer x = {t, rb_fiber_scheduler_current(), io, Qnil, Qnil, base, size, write};
    VALUE result;
    ssize_t n;
    int state;

    *exception = Qnil;
    if (t->broken)
        rb_raise(rb_eIOError, "TLS stream broken: a transfer was abandoned midway");
    if (!NIL_P(x.scheduler) && scheduler_usable(x.scheduler, t->socket)) {
        if (write) t->flushing = size;
        else t->filling = 1;
        result = rb_protect(transfer_call, (VALUE)&x, &state);
        if (state) {
            VALUE error = rb_errinfo();
            /* errinfo is an exception only when one was raised: a throw
             * leaves internal data there, Fiber#kill and Thread#kill none */
            int raised = RB_TYPE_P(error, T_OBJECT) && rb_obj_is_kind_of(error, rb_eException);

            /* Fiber#kill, Thread#kill, throw: the kernel may have moved
             * bytes nobody counted.  (An exception means it did not: a
             * completed transfer defers it, see transfer_call().) */
            if (!raised) t->broken = 1;
            /* The hook's IO#timeout: raised as the socket BIO's wait would,
             * which is where stock notices it. */
            if (raised && rb_obj_is_kind_of(error, rb_eIOTimeoutError) &&
                !NIL_P(rb_io_timeout(io))) {
                rb_set_errinfo(Qnil);
                transport_timeout(write ? RUBY_IO_WRITABLE : RUBY_IO_READABLE);
            }
            rb_jump_tag(state);
        }
        *exception = x.exception;
        if (result != Qundef) {
            n = NUM2SSIZET(result);
            if (n > (ssize_t)size) rb_raise(rb_eIOError, "scheduler transferred more than asked");
            return n;
        }
    }
    if (write) n = direct_write(t, base, size);
    else n = t->socket ? recv(t->fd, base, size, MSG_DONTWAIT) : read(t->fd, base, size);
    return n < 0 ? -errno : n;
}

static void
transport_wait(VALUE io, int events)
{
    if (!RTEST(rb_io_wait(io, RB_INT2NUM(events), RUBY_IO_TIMEOUT_DEFAULT)))
        transport_timeout(events);
}

static int
io_closed_p(VALUE io)
{
    return RTEST(rb_io_closed_p(io));
}

struct fill_args {
    struct ossl_transport *t;
    VALUE io;
    unsigned long gen;
    int readahead;
};

static VALUE
fill_locked(VALUE ptr)
{
    struct fill_args *a = (struct fill_args *)ptr;
    struct ossl_transport *t = a->t;
    VALUE exception;
    size_t size;
    ssize_t n;

    for (;;) {
        /* Another fiber filled, or its call left bytes, while this one
         * waited (for the lock, or below): retry the SSL_* call first.
         * (libssl takes every staged byte before it asks for more.) */
        if (t->fill_gen != a->gen || t->rtail > t->rhead || t->eof || t->rerr) return Qnil;
        /* libssl reads the stale descriptor number of a closed IO. */
        if (io_closed_p(a->io)) {
            t->rerr = EBADF;
            t->fill_gen++;
            return Qnil;
        }
        if (!t->rbuf && !(t->rbuf = malloc(TRANSPORT_BUFFER_SIZE))) rb_memerror();
        t->rhead = t->rtail = 0;
        size = TRANSPORT_BUFFER_SIZE;
        if (!a->readahead && t->ask > 0 && t->ask < size) size = t->ask;
        n = transfer(t, a->io, t->rbuf, size, 0, &exception);
        if (n > 0) t->rtail = n;
        if (n == -EAGAIN || n == -EWOULDBLOCK || n == -EINTR) {
            if (!NIL_P(exception)) rb_exc_raise(exception);
            transport_wait(a->io, RUBY_IO_READABLE);
            continue;
        }
        if (n == 0) t->eof = 1;
        else if (n < 0) t->rerr = (int)-n;
        t->fill_gen++;
        t->ask = 0;
        if (!NIL_P(exception)) rb_exc_raise(exception);
        return Qnil;
    }
}

/*
 * Instead of waiting for the descriptor after SSL_ERROR_WANT_READ in a
 * blocking call: receives once into the staging buffer (all it can hold
 * with `readahead`, else what libssl asked for).  End of stream and errors
 * are reported to libssl by the BIO, so the SSL_* call retried fails as it
 * would on the socket.  Returns 0 if `ssl` has no transport.
 */
int
ossl_transport_fill(SSL *ssl, VALUE io, int readahead)
{
    struct ossl_transport *t = transport_of(ssl);
    struct fill_args a;

    if (!t) return 0;
    a.t = t;
    a.io = io;
    a.gen = t->fill_gen;
    a.readahead = readahead;
    rb_mutex_synchronize(t->fill_lock, fill_locked, (VALUE)&a);
    return 1;
}

struct flush_args {
    struct ossl_transport *t;
    VALUE io;
    const char *funcname;
    size_t limit;               /* send this much (what was staged), or all */
};

static VALUE
flush_locked(VALUE ptr)
{
    struct flush_args *a = (struct flush_args *)ptr;
    struct ossl_transport *t = a->t;
    VALUE exception;
    ssize_t n;

    while (t->wlen > 0 && a->limit > 0) {
        if (io_closed_p(a->io)) rb_syserr_fail(EBADF, a->funcname);
        /* Bytes appended meanwhile (by other fibers) go in the next round. */
        n = transfer(t, a->io, t->wbuf, t->wlen, 1, &exception);
        if (n > 0) {
            memmove(t->wbuf, t->wbuf + n, t->wlen - n);
            t->wlen -= n;
            a->limit = (size_t)n < a->limit ? a->limit - n : 0;
        }
        else if (n == -EAGAIN || n == -EWOULDBLOCK || n == -EINTR || n == 0) {
            if (!NIL_P(exception)) rb_exc_raise(exception);
            transport_wait(a->io, RUBY_IO_WRITABLE);
            continue;
        }
        else {
            rb_syserr_fail((int)-n, a->funcname);
        }
        if (!NIL_P(exception)) rb_exc_raise(exception);
    }
    if (t->wlen == 0 && !t->flushing) {
        free(t->wbuf);
        t->wbuf = NULL;
        t->wcap = 0;
    }
    return Qnil;
}

/*
 * Sends all staged ciphertext (waiting for another fiber's flush first).
 * Errors raise as the socket BIO's do through SSL_*: Errno::EPIPE and
 * friends, with `funcname` in the message where stock has it.  Returns 0
 * if `ssl` has no transport.
 */
static void
flush_up_to(struct ossl_transport *t, VALUE io, const char *funcname, size_t limit)
{
    struct flush_args a;

    a.t = t;
    a.io = io;
    a.funcname = funcname;
    a.limit = limit;
    rb_mutex_synchronize(t->flush_lock, flush_locked, (VALUE)&a);
}

int
ossl_transport_flush(SSL *ssl, VALUE io, const char *funcname)
{
    struct ossl_transport *t = transport_of(ssl);

    if (!t) return 0;
    if (t->wlen > 0) flush_up_to(t, io, funcname, SIZE_MAX);
    return 1;
}

/*
 * Before a blocking SSL_write(): room for one record (it writes one, in
 * SSL_MODE_ENABLE_PARTIAL_WRITE), sending what is staged first if needed,
 * so that the BIO never refuses the record (see bio_write()).  Several
 * writer fibers each reserve before they write.
 */
void
ossl_transport_reserve(SSL *ssl, VALUE io, const char *funcname)
{
    struct ossl_transport *t = transport_of(ssl);

    while (t && t->wlen > 0 && t->wlen + TRANSPORT_RECORD_MAX > (t->wcap ? t->wcap : TRANSPORT_BUFFER_SIZE))
        ossl_transport_flush(ssl, io, funcname);
}

/*
 * After a blocking SSL_write() took `nwritten` bytes: sends them.  If an
 * interrupt (Timeout, Fiber#raise) stops the send, the bytes stay staged
 * and the count is kept for the fiber's retry (ossl_transport_resume_write()),
 * as libssl keeps a record the socket BIO could not write: the retry does
 * not send them twice.  One count per socket: while a fiber's retry is
 * owed, another fiber's interrupted write is not covered (it is, once that
 * fiber is gone).
 */
void
ossl_transport_flush_written(SSL *ssl, VALUE io, int nwritten, const char *funcname)
{
    struct ossl_transport *t = transport_of(ssl);
    VALUE fiber = rb_fiber_current();
    int mine;

    if (!t) return;
    if (t->committed && t->committer != fiber && !RTEST(rb_fiber_alive_p(t->committer)))
        t->committed = 0;
    mine = !t->committed || t->committer == fiber;
    if (mine) {
        t->committed = nwritten;
        t->committer = fiber;
    }
    ossl_transport_flush(ssl, io, funcname);
    if (mine) {
        t->committed = 0;
        t->committer = Qnil;
    }
}

/*
 * Before a blocking SSL_write() of `num` bytes: if this fiber's last
 * write was interrupted after its bytes were taken, this is its retry
 * (libssl's rule: at least as many bytes; OpenSSL::Buffering retries with
 * more): finishes the flush and returns that write's count.  Otherwise 0:
 * write as usual.
 */
int
ossl_transport_resume_write(SSL *ssl, VALUE io, int num, const char *funcname)
{
    struct ossl_transport *t = transport_of(ssl);
    int n;

    if (!t || !t->committed || t->committer != rb_fiber_current()) return 0;
    n = t->committed;
    if (num < n) {
        t->committed = 0;
        t->committer = Qnil;
        return 0;
    }
    ossl_transport_flush_written(ssl, io, n, funcname);
    return n;
}

/* A non-blocking write forgets this fiber's interrupted blocking one. */
void
ossl_transport_forget_write(SSL *ssl)
{
    struct ossl_transport *t = transport_of(ssl);

    if (t && t->committer == rb_fiber_current()) {
        t->committed = 0;
        t->committer = Qnil;
    }
}

/* Whether the send buffer takes one more record without growing. */
int
ossl_transport_room(SSL *ssl)
{
    struct ossl_transport *t = transport_of(ssl);

    return t && t->wlen + TRANSPORT_RECORD_MAX <= (t->wcap ? t->wcap : TRANSPORT_BUFFER_SIZE);
}

/*
 * After an SSL_read() that returns data and staged output (a renegotiation
 * flight): sends it without waiting, so that nothing can interrupt the
 * return of the data; what the socket does not take goes with the next
 * call.
 */
void
ossl_transport_drain(SSL *ssl, VALUE io)
{
    struct ossl_transport *t = transport_of(ssl);

    if (t && t->wlen > 0) drain_nonblock(t, io);
}

/*
 * After an SSL_* call of a blocking method (the handshake, a read that
 * did not return data, a write that did not succeed): what is staged
 * (records, a handshake flight, a renegotiation answer, an alert, or what
 * an interrupted flush left) is sent, up to what is there now, before the
 * method waits or returns.  If another fiber's flush is under way, it
 * sends these bytes: a reader never waits for writers (the peer may be
 * waiting for it to read).  After a failed call one attempt is made
 * without waiting, errors ignored: the call's own error is the one to
 * raise.
 */
void
ossl_transport_after(SSL *ssl, VALUE io, int ssl_error, const char *funcname)
{
    struct ossl_transport *t = transport_of(ssl);

    if (!t || t->wlen == 0 || t->mode == OSSL_TRANSPORT_DIRECT) return;
    switch (ssl_error) {
      case SSL_ERROR_NONE:
      case SSL_ERROR_WANT_READ:
      case SSL_ERROR_WANT_WRITE:
        if (!RTEST(rb_mutex_locked_p(t->flush_lock)))
            flush_up_to(t, io, funcname, t->wlen);
        return;
      default:
        drain_nonblock(t, io);
    }
}

static void
Init_transport_bio(void)
{
    const char *env = getenv("RUBY_OPENSSL_SCHEDULER_TRANSPORT");

    transport_enabled = !(env && strcmp(env, "0") == 0);
    transport_bio_type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
    transport_method = BIO_meth_new(transport_bio_type, "ruby scheduler transport");
    if (!transport_method ||
        !BIO_meth_set_write(transport_method, bio_write) ||
        !BIO_meth_set_read(transport_method, bio_read) ||
        !BIO_meth_set_ctrl(transport_method, bio_ctrl) ||
        !BIO_meth_set_create(transport_method, bio_create) ||
        !BIO_meth_set_destroy(transport_method, bio_destroy))
        ossl_raise(eOSSLError, "BIO_meth_new");

    id_i_scheduler_transport = rb_intern_const("@scheduler_transport");
    id_i_context = rb_intern_const("@context");
    id_socket_recv = rb_intern_const("socket_recv");
    id_socket_send = rb_intern_const("socket_send");
    id_io_read = rb_intern_const("io_read");
    id_io_write = rb_intern_const("io_write");
}

#else /* !OSSL_SCHEDULER_TRANSPORT */

int
ossl_transport_attach(VALUE self, SSL *ssl, VALUE io)
{
    rb_ivar_set(self, id_i_transport, ID2SYM(rb_intern("fd")));
    return 0;
}
int ossl_transport_p(SSL *ssl) { return 0; }
void ossl_transport_begin(SSL *ssl, enum ossl_transport_mode mode) { }
void ossl_transport_after(SSL *ssl, VALUE io, int ssl_error, const char *funcname) { }
int ossl_transport_fill(SSL *ssl, VALUE io, int readahead) { return 0; }
int ossl_transport_flush(SSL *ssl, VALUE io, const char *funcname) { return 0; }
void ossl_transport_reserve(SSL *ssl, VALUE io, const char *funcname) { }
int ossl_transport_room(SSL *ssl) { return 0; }
void ossl_transport_flush_written(SSL *ssl, VALUE io, int nwritten, const char *funcname) { }
int ossl_transport_resume_write(SSL *ssl, VALUE io, int num, const char *funcname) { return 0; }
void ossl_transport_forget_write(SSL *ssl) { }
void ossl_transport_drain(SSL *ssl, VALUE io) { }
static void Init_transport_bio(void) { }

#endif

/*
 * call-seq:
 *    ssl.transport => :scheduler, :fd or nil
 *
 * How the socket's bytes move: +:scheduler+ when #connect or #accept ran in
 * a non-blocking fiber whose Fiber.scheduler has transfer hooks
 * (Fiber::Scheduler#socket_recv and #socket_send, or #io_read and
 * #io_write), so the scheduler receives and sends the ciphertext; +:fd+
 * when libssl reads and writes the descriptor itself and the scheduler
 * only waits for it (no scheduler, or an opt-out:
 * SSLContext#scheduler_transport = false, or
 * RUBY_OPENSSL_SCHEDULER_TRANSPORT=0 in the environment).  +nil+ before
 * the handshake started.
 */
static VALUE
ossl_ssl_transport(VALUE self)
{
    VALUE t = rb_attr_get(self, id_i_transport);

    if (NIL_P(t) || SYMBOL_P(t)) return t;
    return ID2SYM(rb_intern("scheduler"));
}

/* Whether the transport has received ciphertext that libssl has not read
 * (SSLSocket#wait_readable returns at once then). */
static VALUE
ossl_ssl_transport_pending_p(VALUE self)
{
#ifdef OSSL_SCHEDULER_TRANSPORT
    VALUE obj = rb_attr_get(self, id_i_transport);
    struct ossl_transport *t;

    if (NIL_P(obj) || SYMBOL_P(obj)) return Qfalse;
    TypedData_Get_Struct(obj, struct ossl_transport, &transport_type, t);
    return t->rtail > t->rhead ? Qtrue : Qfalse;
#else
    return Qfalse;
#endif
}

void
Init_ossl_ssl_transport(void (*timed_out)(int events))
{
#ifdef OSSL_SCHEDULER_TRANSPORT
    transport_timed_out = timed_out;
#endif
    /* hidden (no @): the transport, or :fd */
    id_i_transport = rb_intern_const("transport");
    Init_transport_bio();
    rb_define_method(cSSLSocket, "transport", ossl_ssl_transport, 0);
    rb_define_private_method(cSSLSocket, "transport_pending?", ossl_ssl_transport_pending_p, 0);
}
