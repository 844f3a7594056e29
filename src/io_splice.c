/**********************************************************************

  io_splice.c - IO.copy_stream without user space buffers: through
                Fiber::Scheduler#io_splice, or with splice(2) on the
                copying thread, the GVL released.

**********************************************************************/

#include "ruby/internal/config.h"

#include <errno.h>
#include <fcntl.h>
#ifndef _WIN32
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "ruby/ruby.h"
#include "internal/io.h"
#include "ruby/fiber/scheduler.h"
#include "ruby/thread.h"
#include "internal/io_splice.h"
struct rb_execution_context_struct; /* for internal/thread.h */
#include "internal/thread.h"
#include "ruby/version.h"

/* Runs func(arg) as a blocking user of io's descriptor, so that IO#close
 * from another thread interrupts it and waits for it: master keeps the
 * users in the IO's blocking-operation list. */
#if RUBY_API_VERSION_MAJOR >= 4
# define io_blocking_user_call(io, func, arg) rb_thread_io_blocking_operation((io), (func), (arg))
#else
# define io_blocking_user_call(io, func, arg) rb_thread_io_blocking_user_call((io), (func), (arg))
#endif

/* Cleared by tests (ext/-test-/io_splice) to make the ordinary loop the
 * reference for the same copies. */
int rb_io_copy_stream_splice_enabled = 1;

#ifdef _WIN32

/* Descriptors are the C runtime's here: both paths stand aside. */
int
rb_io_copy_stream_hook(VALUE scheduler, struct rb_io_splice_copy *c)
{
    return RB_IO_SPLICE_FALLBACK;
}

int
rb_io_copy_stream_splice(struct rb_io_splice_copy *c)
{
    return RB_IO_SPLICE_FALLBACK;
}

#else /* !_WIN32 */

/* The most one #io_splice call is asked to copy. */
#define HOOK_CHUNK (4 << 20)

static int
copy_failed(struct rb_io_splice_copy *c, int error_no, const char *syserr)
{
    c->error_no = error_no;
    c->syserr = syserr;
    return RB_IO_SPLICE_FAILED;
}

/*
 * #io_splice reports a negated errno without saying which end failed.
 * IO.copy_stream names the call as its ordinary paths would have: from a
 * regular file, copy_file_range(2) to a regular file and sendfile(2) to
 * anything else; otherwise the read(2)/write(2) loop, where the errors only
 * a write can give are the destination's.
 */
static const char *
hook_syserr(const struct rb_io_splice_copy *c, int error_no)
{
    if (S_ISREG(c->src_mode)) {
        return S_ISREG(c->dst_mode) ? "copy_file_range" : "sendfile";
    }
    switch (error_no) {
      case EPIPE:
      case ENOSPC:
      case EFBIG:
#ifdef EDQUOT
      case EDQUOT:
#endif
        return "write";
      case ECONNRESET:
      case ECONNABORTED:
      case ENOTCONN:
      case ETIMEDOUT:
        /* a socket's: the destination's if only it is one */
        if (S_ISSOCK(c->dst_mode) && !S_ISSOCK(c->src_mode)) return "write";
        break;
    }
    return "read";
}

/*
 * A byte stream splice(2) can move without changing what arrives: a
 * regular file, a pipe, or a stream socket.  Datagram and seqpacket sockets
 * are left to the ordinary loop, whose 16 KiB reads and writes decide where
 * their messages are cut.
 */
static int
splice_stream_p(const struct rb_io *fptr, mode_t mode)
{
    int type;
    socklen_t len = sizeof(type);

    if (S_ISREG(mode) || S_ISFIFO(mode)) return 1;
    if (!S_ISSOCK(mode)) return 0;
    return getsockopt(fptr->fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

/* Waits as IO's own waits do, IO#timeout included. */
static void
hook_wait(VALUE io, enum rb_io_event event)
{
    if (!RTEST(rb_io_wait(io, RB_INT2NUM(event), RUBY_IO_TIMEOUT_DEFAULT))) {
        rb_raise(rb_eIOTimeoutError, "Timed out waiting for IO to become %s!",
                 event == RUBY_IO_READABLE ? "readable" : "writable");
    }
}

int
rb_io_copy_stream_hook(VALUE scheduler, struct rb_io_splice_copy *c)
{
    /* pread(2) on a pipe or a socket: let the ordinary path fail with
     * ESPIPE as it always has. */
    if (c->src_offset >= 0 && !S_ISREG(c->src_mode)) return RB_IO_SPLICE_FALLBACK;
    if (!splice_stream_p(c->src_fptr, c->src_mode) || !splice_stream_p(c->dst_fptr, c->dst_mode)) {
        return RB_IO_SPLICE_FALLBACK;
    }

    if (c->length < 0 && S_ISREG(c->src_mode)) {
        /* As copy_file_range(2) and sendfile(2) on the ordinary path: up
         * to the size the file has when the copy starts. */
        struct stat st;
        rb_off_t start = c->src_offset >= 0 ? c->src_offset : lseek(c->src_fptr->fd, 0, SEEK_CUR);

        if (start >= 0 && fstat(c->src_fptr->fd, &st) == 0) {
            if (start > st.st_size && S_ISREG(c->dst_mode)) {
                /* copy_file_range(2) is asked for the negative rest as a
                 * size_t there, and refuses the offset overflow. */
                return copy_failed(c, EOVERFLOW, "copy_file_range");
            }
            c->length = st.st_size > start ? st.st_size - start : 0;
        }
    }

    int again = 0;              /* -EAGAIN answers in a row */

    while (c->length != 0) {
        size_t want = HOOK_CHUNK;
        VALUE result;
        ssize_t n;

        if (c->length > 0 && c->length < (rb_off_t)want) want = (size_t)c->length;
        result = rb_fiber_scheduler_io_splice(scheduler, c->src, c->src_offset, c->dst, -1, want);
        if (RB_UNDEF_P(result) || NIL_P(result)) return RB_IO_SPLICE_FALLBACK;

        n = NUM2SSIZET(result);
        if (n == 0) return RB_IO_SPLICE_DONE;
        if (n == -EAGAIN || n == -EWOULDBLOCK) {
            /* The hook would have had to wait: for bytes to read or room
             * to write.  Wait for both with #io_wait (at once for the side
             * that is ready), then call it again.  A second -EAGAIN with
             * both ends ready is a copy the hook cannot make (splice(2)
             * stops at TCP urgent data, which read(2) steps over): the
             * rest goes to the ordinary loop rather than around here. */
            if (again++) return RB_IO_SPLICE_FALLBACK;
            hook_wait(c->src, RUBY_IO_READABLE);
            hook_wait(c->dst, RUBY_IO_WRITABLE);
            continue;
        }
        again = 0;
        if (n < 0) return copy_failed(c, (int)-n, hook_syserr(c, (int)-n));
        if ((size_t)n > want) {
            rb_raise(rb_eRuntimeError, "io_splice copied %"PRIdSIZE" bytes, more than the %"PRIuSIZE" asked for", n, want);
        }
        c->total += n;
        if (c->length > 0) c->length -= n;
        if (c->src_offset >= 0) c->src_offset += n;
    }
    return RB_IO_SPLICE_DONE;
}

#if defined(__linux__) && defined(SPLICE_F_NONBLOCK)

/*
 * splice(2) from a TCP socket stops at urgent data (MSG_OOB) and never
 * passes it: it answers 0 or EAGAIN there while bytes wait behind the
 * mark.  read(2), the ordinary loop's, steps over the urgent byte.
 */
static int
at_urgent_mark_p(int fd)
{
    int at = 0;

    return ioctl(fd, SIOCATMARK, &at) == 0 && at;
}

/* What the copy's pipe is asked to hold: a round moves at most this much.
 * 1 MiB is the default pipe-max-size; a smaller pipe works, slower. */
#define PIPE_CAPACITY (1 << 20)

/* Errors that mean "splice(2) does not do this descriptor", before any
 * byte has moved: the ordinary loop takes over. */
static int
splice_refused_p(int error_no)
{
    switch (error_no) {
      case EINVAL:
      case ENOSYS:
#ifdef EOPNOTSUPP
      case EOPNOTSUPP:
#endif
#if defined(ENOTSUP) && (!defined(EOPNOTSUPP) || ENOTSUP != EOPNOTSUPP)
      case ENOTSUP:
#endif
        return 1;
    }
    return 0;
}

static int
splice_destination_p(const struct rb_io_splice_copy *c)
{
    if (!splice_stream_p(c->dst_fptr, c->dst_mode)) return 0;
    if (S_ISREG(c->dst_mode)) {
        /* splice(2) refuses O_APPEND files with EINVAL, and only once
         * bytes are in the pipe: rule them out first, and O_DIRECT ones,
         * whose alignment rules a pipeful need not follow. */
        int flags = fcntl(c->dst_fptr->fd, F_GETFL);
#ifdef O_DIRECT
        if (flags >= 0 && (flags & O_DIRECT)) return 0;
#endif
        return flags >= 0 && !(flags & O_APPEND);
    }
    return 1;
}

/* ---- splice(2) on the copying thread, the GVL released ---- */

enum direct_status { DIRECT_DONE, DIRECT_FAILED, DIRECT_FALLBACK, DIRECT_INTERRUPTED };

struct direct_copy {
    struct rb_io_splice_copy *c;
    int src, dst;               /* descriptors, read once under the GVL */
    int src_sock;
    int pipe[2];
    unsigned int capacity;
    size_t pending;             /* bytes in the pipe */
    int eof;
    int src_poll_first, dst_poll_first;
    enum direct_status status;
};

static int
direct_wait(int fd, short events)
{
    struct pollfd pfd;

    pfd.fd = fd;
    pfd.events = events;
    pfd.revents = 0;
    return poll(&pfd, 1, -1);
}

/* Without the GVL.  Both descriptors are ruby's, non-blocking: a side
 * that is not ready is waited for with poll(2), which the thread's
 * unblocking function (a signal) interrupts.  A splice that moved less
 * than it could found the socket or pipe drained (or full): the next turn
 * polls first, one syscall instead of a splice that fails with EAGAIN. */
static void *
direct_copy_nogvl(void *ptr)
{
    struct direct_copy *d = ptr;
    struct rb_io_splice_copy *c = d->c;
    ssize_t n;

    for (;;) {
        while (d->pending > 0) {
            if (d->dst_poll_first) {
                d->dst_poll_first = 0;
                if (direct_wait(d->dst, POLLOUT) < 0 && errno == EINTR) goto interrupted;
            }
            n = splice(d->pipe[0], NULL, d->dst, NULL, d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending -= n;
                c->total += n;
                d->dst_poll_first = d->pending > 0;
            }
            else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                d->dst_poll_first = 1;
            }
            else if (n < 0 && errno == EINTR) {
                goto interrupted;
            }
            else {
                c->error_no = n < 0 ? errno : EIO;
                c->syserr = "write";
                d->status = DIRECT_FAILED;
                return NULL;
            }
        }
        if (d->eof || c->length == 0) {
            d->status = DIRECT_DONE;
            return NULL;
        }
        if (d->src_poll_first) {
            d->src_poll_first = 0;
            if (direct_wait(d->src, POLLIN) < 0 && errno == EINTR) goto interrupted;
        }
        {
            size_t want = d->capacity;

            if (c->length >= 0 && c->length < (rb_off_t)want) want = (size_t)c->length;
            n = splice(d->src, NULL, d->pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending = n;
                if (c->length > 0) c->length -= n;
                d->src_poll_first = (size_t)n < want;
                continue;
            }
        }
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
            /* Out-of-band data stops a splice at the mark: the ordinary
             * loop reads past it, as stock.  The pipe is empty here. */
            if (d->src_sock && at_urgent_mark_p(d->src)) {
                d->status = DIRECT_FALLBACK;
                return NULL;
            }
            if (n == 0) d->eof = 1;
            else d->src_poll_first = 1;
            continue;
        }
        if (errno == EINTR) goto interrupted;
        c->error_no = errno;
        c->syserr = "read";
        d->status = splice_refused_p(errno) ? DIRECT_FALLBACK : DIRECT_FAILED;
        return NULL;
    }

  interrupted:
    d->status = DIRECT_INTERRUPTED;
    return NULL;
}

static VALUE
direct_copy_body(VALUE ptr)
{
    struct direct_copy *d = (struct direct_copy *)ptr;

    for (;;) {
        rb_io_check_closed(d->c->src_fptr);
        rb_io_check_closed(d->c->dst_fptr);
        d->src = d->c->src_fptr->fd;
        d->dst = d->c->dst_fptr->fd;
        d->status = DIRECT_INTERRUPTED;
        rb_thread_call_without_gvl(direct_copy_nogvl, d, RUBY_UBF_IO, 0);
        switch (d->status) {
          case DIRECT_INTERRUPTED:
            rb_thread_check_ints();
            continue;
          case DIRECT_DONE:
            return INT2FIX(RB_IO_SPLICE_DONE);
          case DIRECT_FALLBACK:
            if (d->pending == 0) return INT2FIX(RB_IO_SPLICE_FALLBACK);
            return INT2FIX(RB_IO_SPLICE_FAILED);
          case DIRECT_FAILED:
            return INT2FIX(RB_IO_SPLICE_FAILED);
        }
    }
}

static VALUE
direct_copy_release(VALUE ptr)
{
    struct direct_copy *d = (struct direct_copy *)ptr;

    close(d->pipe[0]);
    close(d->pipe[1]);
    return Qnil;
}

static VALUE
direct_copy_to(VALUE ptr)
{
    struct direct_copy *d = (struct direct_copy *)ptr;

    return io_blocking_user_call(d->c->dst, direct_copy_body, ptr);
}

static VALUE
direct_copy_from(VALUE ptr)
{
    struct direct_copy *d = (struct direct_copy *)ptr;

    if (d->c->src_fptr->fd == d->c->dst_fptr->fd) {
        return io_blocking_user_call(d->c->src, direct_copy_body, ptr);
    }
    return io_blocking_user_call(d->c->src, direct_copy_to, ptr);
}

int
rb_io_copy_stream_splice(struct rb_io_splice_copy *c)
{
    struct direct_copy d;
    int size;

    if (!rb_io_copy_stream_splice_enabled) return RB_IO_SPLICE_FALLBACK;
    /* Regular files are copy_file_range(2)'s and sendfile(2)'s; an offset
     * into a pipe or a socket is the ordinary loop's ESPIPE. */
    if (c->src_offset >= 0 || S_ISREG(c->src_mode) || !splice_stream_p(c->src_fptr, c->src_mode)) {
        return RB_IO_SPLICE_FALLBACK;
    }
    if (!splice_destination_p(c)) return RB_IO_SPLICE_FALLBACK;

    memset(&d, 0, sizeof(d));
    d.c = c;
    d.src_sock = S_ISSOCK(c->src_mode);
    if (pipe2(d.pipe, O_CLOEXEC) < 0) return RB_IO_SPLICE_FALLBACK;
    if (c->length < 0 || c->length > (1 << 16)) {
        fcntl(d.pipe[1], F_SETPIPE_SZ, PIPE_CAPACITY);  /* best effort */
    }
    size = fcntl(d.pipe[1], F_GETPIPE_SZ);
    d.capacity = size > 0 ? (unsigned int)size : (1 << 16);
    return FIX2INT(rb_ensure(direct_copy_from, (VALUE)&d, direct_copy_release, (VALUE)&d));
}

#else /* no splice(2) */

int
rb_io_copy_stream_splice(struct rb_io_splice_copy *c)
{
    return RB_IO_SPLICE_FALLBACK;
}

#endif /* splice(2) */

#endif /* _WIN32 */
