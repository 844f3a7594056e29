/**********************************************************************

  io_splice.c - IO.copy_stream without user space buffers: through
                Fiber::Scheduler#io_splice, or with splice(2) on the
                thread's io_uring.

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
#include "internal/io_splice.h"
#include "internal/io_uring.h"
struct rb_execution_context_struct; /* for internal/thread.h */
#include "internal/thread.h"

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

    while (c->length != 0) {
        size_t want = HOOK_CHUNK;
        VALUE result;
        ssize_t n;

        if (c->length > 0 && c->length < (rb_off_t)want) want = (size_t)c->length;
        result = rb_fiber_scheduler_io_splice(scheduler, c->src, c->src_offset, c->dst, -1, want);
        if (RB_UNDEF_P(result) || NIL_P(result)) return RB_IO_SPLICE_FALLBACK;

        n = NUM2SSIZET(result);
        if (n == 0) return RB_IO_SPLICE_DONE;
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

#if USE_IO_URING

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

struct uring_copy {
    struct rb_io_splice_copy *c;
    struct io_uring *ring;
    int pipe[2];
    unsigned int capacity;
    size_t pending;             /* in the pipe: read, not written yet */
};

enum uring_copy_step { STEP_POLL_IN, STEP_IN, STEP_POLL_OUT, STEP_OUT };

static struct io_uring_sqe *
uring_copy_sqe(struct uring_copy *u, struct rb_io_uring_op *ops, enum uring_copy_step *steps, int *n, enum uring_copy_step step)
{
    struct io_uring_sqe *sqe = rb_io_uring_sqe(u->ring, &ops[*n]);

    /* The copy holds the ring, idle between rounds: room for a round is a
     * bug if missing. */
    if (!sqe) rb_bug("io_uring submission queue full in IO.copy_stream");
    steps[(*n)++] = step;
    return sqe;
}

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

/*
 * Rounds of linked operations.  With the pipe empty: source -> pipe, hard
 * linked to pipe -> destination, so one submission moves a chunk unless
 * the source has less or the destination takes less; the second splice
 * does not wait on the pipe (SPLICE_F_NONBLOCK), so a short, empty or
 * failed first one costs nothing.  Bytes the destination did not take are
 * written by the next rounds before anything more is read.  A descriptor
 * that answers EAGAIN (Ruby's are non-blocking) gets an IORING_OP_POLL_ADD
 * linked in front of the next try.
 */
static VALUE
uring_copy_body(VALUE ptr)
{
    struct uring_copy *u = (struct uring_copy *)ptr;
    struct rb_io_splice_copy *c = u->c;
    int wait_in = 0, wait_out = 0, eof = 0;
    unsigned int asked = 0;

    for (;;) {
        struct rb_io_uring_op ops[3];
        enum uring_copy_step steps[3];
        struct io_uring_sqe *sqe;
        int n = 0, i, ret;

        if (u->pending == 0 && (eof || c->length == 0)) return INT2FIX(RB_IO_SPLICE_DONE);
        rb_io_check_closed(c->src_fptr);
        rb_io_check_closed(c->dst_fptr);

        if (u->pending == 0) {
            unsigned int want = u->capacity;

            if (c->length >= 0 && c->length < (rb_off_t)want) want = (unsigned int)c->length;
            asked = want;
            if (wait_in) {
                sqe = uring_copy_sqe(u, ops, steps, &n, STEP_POLL_IN);
                io_uring_prep_poll_add(sqe, c->src_fptr->fd, POLLIN);
                sqe->flags |= IOSQE_IO_LINK;
                wait_in = 0;
            }
            sqe = uring_copy_sqe(u, ops, steps, &n, STEP_IN);
            io_uring_prep_splice(sqe, c->src_fptr->fd, -1, u->pipe[1], -1, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            sqe->flags |= IOSQE_IO_HARDLINK;
            sqe = uring_copy_sqe(u, ops, steps, &n, STEP_OUT);
            io_uring_prep_splice(sqe, u->pipe[0], -1, c->dst_fptr->fd, -1, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        }
        else {
            if (wait_out) {
                sqe = uring_copy_sqe(u, ops, steps, &n, STEP_POLL_OUT);
                io_uring_prep_poll_add(sqe, c->dst_fptr->fd, POLLOUT);
                sqe->flags |= IOSQE_IO_LINK;
            }
            sqe = uring_copy_sqe(u, ops, steps, &n, STEP_OUT);
            io_uring_prep_splice(sqe, u->pipe[0], -1, c->dst_fptr->fd, -1, (unsigned int)u->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        }

        ret = rb_io_uring_wait(u->ring, ops, n);

        wait_out = 0;
        for (i = 0; i < n; i++) {
            int r = ops[i].done ? ops[i].result : -ECANCELED;

            if (r == -ECANCELED || r == -EINTR) continue;
            switch (steps[i]) {
              case STEP_POLL_IN:
              case STEP_POLL_OUT:
                /* a mask: readiness, or an error the splice will report */
                break;
              case STEP_IN:
                if (r > 0) {
                    u->pending += r;
                    if (c->length > 0) c->length -= r;
                    /* A short read emptied the source: the next splice
                     * would say EAGAIN, after a trip through a worker. */
                    if ((unsigned int)r < asked) wait_in = 1;
                }
                else if ((r == 0 || r == -EAGAIN || r == -EWOULDBLOCK) &&
                         S_ISSOCK(c->src_mode) && at_urgent_mark_p(c->src_fptr->fd)) {
                    return INT2FIX(RB_IO_SPLICE_FALLBACK);  /* the pipe is empty */
                }
                else if (r == 0) {
                    eof = 1;
                }
                else if (r == -EAGAIN || r == -EWOULDBLOCK) {
                    wait_in = 1;
                }
                else if (splice_refused_p(-r) && u->pending == 0) {
                    return INT2FIX(RB_IO_SPLICE_FALLBACK);
                }
                else {
                    return INT2FIX(copy_failed(c, -r, "read"));
                }
                break;
              case STEP_OUT:
                if (r > 0) {
                    u->pending -= r;
                    c->total += r;
                }
                else if (r == -EAGAIN || r == -EWOULDBLOCK) {
                    if (u->pending > 0) wait_out = 1;
                }
                else if (r < 0) {
                    return INT2FIX(copy_failed(c, -r, "write"));
                }
                break;
            }
        }

        if (ret == -EINTR) {
            rb_thread_check_ints();
        }
        else if (ret < 0) {
            /* The ring broke: the ordinary loop goes on, unless bytes are
             * stranded in the pipe. */
            if (u->pending == 0) return INT2FIX(RB_IO_SPLICE_FALLBACK);
            return INT2FIX(copy_failed(c, -ret, "io_uring_enter"));
        }
    }
}

static VALUE
uring_copy_release(VALUE ptr)
{
    struct uring_copy *u = (struct uring_copy *)ptr;

    close(u->pipe[0]);
    close(u->pipe[1]);
    rb_io_uring_release(u->ring);
    return Qnil;
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

/* The thread is a user of both descriptors while its splices may be in
 * flight: IO#close from another thread interrupts it and waits, so no
 * splice can reach a descriptor number the close has given back. */
static VALUE
uring_copy_to(VALUE ptr)
{
    struct uring_copy *u = (struct uring_copy *)ptr;

    return rb_thread_io_blocking_user_call(u->c->dst, uring_copy_body, ptr);
}

static VALUE
uring_copy_from(VALUE ptr)
{
    struct uring_copy *u = (struct uring_copy *)ptr;

    /* Once per descriptor: IO#close interrupts each registration, and a
     * second IOError for one close (copy_stream(sock, sock), an echo)
     * would fire after the caller rescued the first. */
    if (u->c->src_fptr->fd == u->c->dst_fptr->fd) {
        return rb_thread_io_blocking_user_call(u->c->src, uring_copy_body, ptr);
    }
    return rb_thread_io_blocking_user_call(u->c->src, uring_copy_to, ptr);
}

int
rb_io_copy_stream_splice(struct rb_io_splice_copy *c)
{
    struct uring_copy u = {c, NULL, {-1, -1}, 0, 0};
    int size;

    /* Regular files are copy_file_range(2)'s and sendfile(2)'s; an offset
     * into a pipe or a socket is the ordinary loop's ESPIPE. */
    if (c->src_offset >= 0 || S_ISREG(c->src_mode) || !splice_stream_p(c->src_fptr, c->src_mode)) {
        return RB_IO_SPLICE_FALLBACK;
    }
    if (!splice_destination_p(c)) return RB_IO_SPLICE_FALLBACK;
    if (!rb_io_uring_supported_p(IORING_OP_SPLICE) || !rb_io_uring_supported_p(IORING_OP_POLL_ADD)) {
        return RB_IO_SPLICE_FALLBACK;
    }
    /* Held for the whole copy, from whichever native thread an M:N thread
     * goes on on.  Busy (another Ruby thread on this native thread is
     * copying with it) or unavailable: the ordinary loop copies. */
    if (!(u.ring = rb_io_uring_get())) return RB_IO_SPLICE_FALLBACK;
    if (pipe2(u.pipe, O_CLOEXEC) < 0) {
        rb_io_uring_release(u.ring);
        return RB_IO_SPLICE_FALLBACK;
    }

    if (c->length < 0 || c->length > (1 << 16)) {
        fcntl(u.pipe[1], F_SETPIPE_SZ, PIPE_CAPACITY);  /* best effort */
    }
    size = fcntl(u.pipe[1], F_GETPIPE_SZ);
    u.capacity = size > 0 ? (unsigned int)size : (1 << 16);

    return FIX2INT(rb_ensure(uring_copy_from, (VALUE)&u, uring_copy_release, (VALUE)&u));
}

#else /* !USE_IO_URING */

int
rb_io_copy_stream_splice(struct rb_io_splice_copy *c)
{
    return RB_IO_SPLICE_FALLBACK;
}

#endif /* USE_IO_URING */

#endif /* _WIN32 */
