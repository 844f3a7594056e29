/**********************************************************************

  io/uring/splice.c - #io_splice of IO::Uring::Scheduler.

  Between non-blocking pipes and sockets: splice(2) itself, through a
  pipe of the scheduler's pool, a poll on the ring when a side is not
  ready.  With a regular file at either end: linked IORING_OP_SPLICE
  pairs (run by io_uring's workers, as disk I/O may block), two pipefuls
  in flight per call.

**********************************************************************/

#include "uring.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

void
pipes_release(struct uring_scheduler *s)
{
    /* Also those of fibers that will never resume (a killed thread):
     * their pipe_give() finds nothing and closes nothing. */
    while (s->npipes > 0) {
        struct splice_pipe *p = &s->pipes[--s->npipes];
        close(p->fds[0]);
        close(p->fds[1]);
    }
}

/* An idle pipe, or a new one (of SPLICE_PIPE_SIZE if the system allows).
 * Returns 0 or a negated errno. */
static int
pipe_take(struct uring_scheduler *s, struct splice_pipe *p)
{
    struct splice_pipe *q;
    int i, size;

    for (i = 0; i < s->npipes; i++) {
        if (!s->pipes[i].busy) {
            s->pipes[i].busy = 1;
            *p = s->pipes[i];
            return 0;
        }
    }
    if (s->npipes == s->pipes_capa) {
        REALLOC_N(s->pipes, struct splice_pipe, s->pipes_capa * 2);
        s->pipes_capa *= 2;
    }
    q = &s->pipes[s->npipes];
    if (pipe2(q->fds, O_CLOEXEC) < 0) return -errno;
    fcntl(q->fds[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE);   /* best effort */
    size = fcntl(q->fds[1], F_GETPIPE_SZ);
    q->capacity = size > 0 ? (unsigned int)size : (1 << 16);
    q->busy = 1;
    s->npipes++;
    *p = *q;
    return 0;
}

/* Done with `p`: an empty pipe goes back to the pool (up to SPLICE_POOL
 * idle ones); one that may hold bytes is closed. */
static void
pipe_give(struct uring_scheduler *s, struct splice_pipe *p, int empty)
{
    int i, idle = 0, found = -1;

    if (p->fds[0] < 0) return;
    for (i = 0; i < s->npipes; i++) {
        if (s->pipes[i].fds[0] == p->fds[0] && s->pipes[i].busy) found = i;
        else if (!s->pipes[i].busy) idle++;
    }
    if (found >= 0) {
        if (empty && idle < SPLICE_POOL && !s->closed && s->ring_live) {
            s->pipes[found].busy = 0;
        }
        else {
            close(p->fds[0]);
            close(p->fds[1]);
            s->pipes[found] = s->pipes[--s->npipes];
        }
    }
    p->fds[0] = p->fds[1] = -1;
}

struct splice_args {
    struct uring_scheduler *s;
    struct io_hook hook;
    int from, to;
    off_t from_offset, to_offset;   /* -1: the file position */
    size_t length;
    struct splice_pipe pipes[SPLICE_CHUNKS];
    int dirty[SPLICE_CHUNKS];       /* the pipe may hold bytes */
    struct uring_op ops[2 * SPLICE_CHUNKS + 1];
    int pending;                    /* operations not completed */
    size_t done;                    /* bytes written to `to` */
    int outs[SPLICE_CHUNKS];        /* the operations of a wait that write */
    int nouts;                      /* to `to`, not counted in `done` yet */
    int advance_from;               /* `from` is a file read at its position */
    /* How the operations name `from` and `to`: their descriptors, or
     * slots of the ring's file table (see splice_files_take). */
    int pair;                       /* the pair of slots, or -1 */
    unsigned long epoch;            /* the table's when it was taken */
    int from_ix, to_ix;
    unsigned char fixed;            /* IOSQE_FIXED_FILE, for `to` */
    unsigned int from_fixed;        /* SPLICE_F_FD_IN_FIXED, for `from` */
    int direct;                     /* pipes and sockets: splice_direct() */
};

/* A sparse table of registered files for the ring (kernel 5.19), in pairs
 * for #io_splice.  Without it (older kernels, a low RLIMIT_NOFILE) the
 * chains name the descriptors. */
void
splice_files_setup(struct uring_scheduler *s)
{
    int i;

    s->file_nfree = 0;
    s->file_epoch++;
    if (io_uring_register_files_sparse(&s->ring, 2 * SPLICE_FILE_PAIRS) < 0) return;
    for (i = SPLICE_FILE_PAIRS - 1; i >= 0; i--) s->file_free[s->file_nfree++] = i;
}

/* The loop ended with fibers that will never run again (see
 * scheduler_cancel_all): their copies never give their slots back, and the
 * table would keep their files open (a pipe's reader would never see the
 * end of file).  Empty it. */
void
splice_files_drop(struct uring_scheduler *s)
{
    int fds[2 * SPLICE_FILE_PAIRS], i;

    if (s->file_nfree == SPLICE_FILE_PAIRS) return;     /* none taken */
    for (i = 0; i < 2 * SPLICE_FILE_PAIRS; i++) fds[i] = -1;
    io_uring_register_files_update(&s->ring, 0, fds, 2 * SPLICE_FILE_PAIRS);
    s->file_nfree = 0;
    for (i = SPLICE_FILE_PAIRS - 1; i >= 0; i--) s->file_free[s->file_nfree++] = i;
    s->file_epoch++;
}

/*
 * The chain of a round names `to` (and `from`) through the ring's file
 * table, not by number.  Operations linked behind a poll are issued later,
 * and the kernel looks a descriptor number up when it issues them: after
 * an IO#close from another thread (which does not wait for this fiber),
 * the number may be another file's, which would get the copy's bytes.
 * A registered file is the one that was registered, whatever the number
 * has become; the table lets go of it when the copy leaves.
 */
static void
splice_files_take(struct splice_args *a)
{
    struct uring_scheduler *s = a->s;
    int fds[2] = {a->from, a->to}, pair;

    a->pair = -1;
    a->from_ix = a->from;
    a->to_ix = a->to;
    a->fixed = 0;
    a->from_fixed = 0;
    if (s->file_nfree == 0) return;     /* too many at once: by number */
    pair = s->file_free[--s->file_nfree];
    if (io_uring_register_files_update(&s->ring, 2 * pair, fds, 2) != 2) {
        s->file_free[s->file_nfree++] = pair;
        return;
    }
    a->pair = pair;
    a->epoch = s->file_epoch;
    a->from_ix = 2 * pair;
    a->to_ix = 2 * pair + 1;
    a->fixed = IOSQE_FIXED_FILE;
    a->from_fixed = SPLICE_F_FD_IN_FIXED;
}

static void
splice_files_give(struct splice_args *a)
{
    struct uring_scheduler *s = a->s;
    int fds[2] = {-1, -1};

    if (a->pair < 0) return;
    if (s->ring_live && s->generation == fork_generation && a->epoch == s->file_epoch) {
        io_uring_register_files_update(&s->ring, 2 * a->pair, fds, 2);
        s->file_free[s->file_nfree++] = a->pair;
    }
    a->pair = -1;
}

/* The fiber waits for a whole chain: only its last completion wakes it. */
static void
splice_op_complete(struct uring_scheduler *s, struct uring_op *op)
{
    struct splice_args *a = op->arg;

    if (--a->pending == 0) ready_push(s, op->fiber);
}

static struct io_uring_sqe *
splice_sqe(struct splice_args *a, int i)
{
    struct io_uring_sqe *sqe = op_sqe(a->s, &a->ops[i]);

    a->ops[i].complete = splice_op_complete;
    a->ops[i].arg = a;
    a->pending++;
    return sqe;
}

static VALUE
splice_wait_yield(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;

    while (a->pending > 0) suspend(a->s);
    return Qnil;
}

/* Leaving early (an exception in the fiber): the operations are cancelled
 * in chain order, each reaped before the next, which may only start once
 * the one before it completes. */
static VALUE
splice_wait_ensure(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    int i;

    for (i = 0; i < a->hook.nops; i++) op_cancel(a->s, &a->ops[i]);
    a->hook.op = NULL;
    a->hook.nops = 0;
    return Qnil;
}

/* Submit the `n` operations prepared in a->ops and wait until all have
 * completed.  Those listed in a->outs write to `to`: what they moved is
 * counted in a->done by the caller, or by splice_leave() if the wait ends
 * in an exception. */
static void
splice_wait(struct splice_args *a, int n)
{
    a->hook.op = a->ops;
    a->hook.nops = n;
    rb_ensure(splice_wait_yield, (VALUE)a, splice_wait_ensure, (VALUE)a);
    hook_check(&a->hook);
}

static int64_t
splice_at(off_t offset, size_t done)
{
    return offset < 0 ? -1 : (int64_t)(offset + (off_t)done);
}

/* Write the `left` bytes stranded in pipe `p` (the destination took less
 * than the chain moved).  Returns 0, or a negated errno. */
static int32_t
splice_drain(struct splice_args *a, struct splice_pipe *p, size_t left)
{
    int wait = 0;

    while (left > 0) {
        struct io_uring_sqe *sqe;
        int n = 0;
        int32_t r;

        sq_reserve(a->s, 2);
        a->pending = 0;
        if (wait) {
            sqe = splice_sqe(a, n++);
            io_uring_prep_poll_add(sqe, a->to_ix, POLLOUT);
            sqe->flags |= IOSQE_IO_LINK | a->fixed;
        }
        a->outs[0] = n;
        a->nouts = 1;
        sqe = splice_sqe(a, n++);
        io_uring_prep_splice(sqe, p->fds[0], -1, a->to_ix, splice_at(a->to_offset, a->done),
                             (unsigned int)left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        sqe->flags |= a->fixed;
        splice_wait(a, n);
        a->nouts = 0;

        if (wait && a->ops[0].result < 0) return a->ops[0].result;
        r = a->ops[n - 1].result;
        wait = 0;
        if (r > 0) {
            left -= r;
            a->done += r;
        }
        else if (r == -EAGAIN || r == -EWOULDBLOCK) {
            wait = 1;
        }
        else if (r != -EINTR) {
            return r < 0 ? r : -EIO;
        }
    }
    return 0;
}

/* splice(2) from a TCP socket stops at urgent data (MSG_OOB), answering 0
 * or EAGAIN with bytes behind the mark; read(2) steps over the urgent
 * byte, so the rest is left to IO.copy_stream's ordinary loop. */
static int
splice_at_urgent_mark_p(int fd)
{
    int at = 0;

    return ioctl(fd, SIOCATMARK, &at) == 0 && at;
}

static int
splice_refused_p(int32_t result)
{
    return result == -EINVAL || result == -ENOSYS || result == -EOPNOTSUPP;
}

/*
 * One round: up to SPLICE_CHUNKS pipes, each filled from `from` and
 * emptied into `to` by a pair of splices, the pairs linked one after the
 * other.  Inside a pair the link is hard: the second splice moves what the
 * first one got, even if that is less than a pipeful (a socket gives what
 * it has), and never waits on the pipe.  Between pairs it is soft: a pair
 * that moved less than a whole chunk ends the chain, so no byte is read
 * past a short read or ahead of bytes the destination has not taken yet.
 * The round's bytes are returned as soon as there are any.
 */
static VALUE
splice_transfer(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    struct uring_scheduler *s = a->s;
    int wait_in = 0;

    for (;;) {
        struct io_uring_sqe *sqe;
        unsigned int lengths[SPLICE_CHUNKS];
        int in[SPLICE_CHUNKS], out[SPLICE_CHUNKS];
        int chunks = 0, n = 0, k, stranded = -1, eof = 0, again = 0, urgent = 0, clean = 1;
        int32_t error = 0;
        size_t planned = 0, left = 0;

        hook_check(&a->hook);
        for (k = 0; k < SPLICE_CHUNKS && planned < a->length; k++) {
            if (a->pipes[k].fds[0] < 0) {
                int e = pipe_take(s, &a->pipes[k]);
                if (e < 0) {
                    if (k == 0) return Qnil;    /* out of descriptors: ruby's loop */
                    break;
                }
                a->dirty[k] = 0;
            }
            lengths[k] = a->pipes[k].capacity;
            if (a->length - planned < lengths[k]) lengths[k] = (unsigned int)(a->length - planned);
            planned += lengths[k];
            chunks++;
        }

        sq_reserve(s, 2 * chunks + 1);
        a->pending = 0;
        if (wait_in) {
            sqe = splice_sqe(a, n++);
            io_uring_prep_poll_add(sqe, a->from_ix, POLLIN);
            sqe->flags |= IOSQE_IO_LINK | a->fixed;
        }
        planned = 0;
        for (k = 0; k < chunks; k++) {
            in[k] = n;
            sqe = splice_sqe(a, n++);
            io_uring_prep_splice(sqe, a->from_ix, splice_at(a->from_offset, a->done + planned), a->pipes[k].fds[1], -1,
                                 lengths[k], SPLICE_F_MOVE | SPLICE_F_NONBLOCK | a->from_fixed);
            sqe->flags |= IOSQE_IO_HARDLINK;
            out[k] = a->outs[k] = n;
            sqe = splice_sqe(a, n++);
            io_uring_prep_splice(sqe, a->pipes[k].fds[0], -1, a->to_ix, splice_at(a->to_offset, a->done + planned),
                                 lengths[k], SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            sqe->flags |= a->fixed;
            if (k + 1 < chunks) sqe->flags |= IOSQE_IO_LINK;
            a->dirty[k] = 1;
            planned += lengths[k];
        }
        a->nouts = chunks;
        splice_wait(a, n);
        a->nouts = 0;

        wait_in = 0;
        for (k = 0; k < chunks; k++) {
            int32_t got = a->ops[in[k]].result, put = a->ops[out[k]].result;
            size_t moved = put > 0 ? (size_t)put : 0;

            /* what the pipe holds now */
            a->dirty[k] = (got > 0 ? (size_t)got : 0) != moved;
        }
        for (k = 0; k < chunks; k++) {
            int32_t got = a->ops[in[k]].result, put = a->ops[out[k]].result;
            size_t moved = put > 0 ? (size_t)put : 0;

            if (got <= 0) {
                if ((got == 0 || got == -EAGAIN || got == -EWOULDBLOCK) && splice_at_urgent_mark_p(a->from)) urgent = 1;
                else if (got == 0) eof = 1;
                else if (got == -EAGAIN || got == -EWOULDBLOCK) again = 1;
                else if (got != -ECANCELED && got != -EINTR) error = got;
                break;
            }
            a->done += moved;
            if (put < 0 && put != -EAGAIN && put != -EWOULDBLOCK && put != -ECANCELED && put != -EINTR) {
                error = put;                /* the pipe keeps what was read */
                break;
            }
            if (moved < (size_t)got) {
                stranded = k;
                left = got - moved;
                break;
            }
            if ((unsigned int)got < lengths[k]) break;
        }
        if (stranded >= 0) {
            error = splice_drain(a, &a->pipes[stranded], left);
            if (!error) a->dirty[stranded] = 0;
        }

        for (k = 0; k < chunks; k++) {
            if (a->dirty[k]) clean = 0;
        }
        if (error) {
            /* A refusal means "not done" only while no byte has been
             * read: one by `to` after a read leaves bytes in a pipe, which
             * nil would lose. */
            if (a->done == 0 && clean && splice_refused_p(error)) return Qnil;
            return INT2NUM(error);
        }
        if (urgent) return a->done > 0 ? SIZET2NUM(a->done) : Qnil;
        if (a->done > 0) return SIZET2NUM(a->done);
        if (eof) return INT2FIX(0);
        if (again) wait_in = 1;
    }
}

/*
 * Between two pipes or sockets: splice(2) itself, non-blocking, through
 * one pipe of the pool, and a poll on the ring when a side is not ready.
 * IORING_OP_SPLICE always runs in an io-wq worker thread (the kernel
 * forces it async), a thread hop per splice; these descriptors cannot
 * block the thread, so the data moves inline and the ring only waits.
 * Every splice(2) follows a hook_check(): after an IO#close from another
 * thread the number is not used again.  Bytes are returned once the source
 * gives less than a pipeful (or `length` is reached) and the pipe is
 * empty.
 */
static VALUE
splice_direct(struct splice_args *a)
{
    struct uring_scheduler *s = a->s;
    struct splice_pipe *p = &a->pipes[0];
    size_t left = 0;            /* in the pipe */
    int drained = 0;            /* the source gave less than asked */
    ssize_t n;

    if (pipe_take(s, p) < 0) return Qnil;   /* out of descriptors: ruby's loop */
    a->dirty[0] = 0;
    for (;;) {
        hook_check(&a->hook);
        if (left > 0) {
            n = splice(p->fds[0], NULL, a->to, NULL, left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                left -= n;
                a->done += n;
                if (left == 0) a->dirty[0] = 0;
            }
            else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                int32_t r = hook_poll(s, &a->hook, a->to, POLLOUT, NULL);
                if (r < 0 && r != -EINTR && r != -ECANCELED) return INT2NUM(r);
            }
            else if (n == 0 || errno != EINTR) {
                return INT2NUM(n < 0 ? -errno : -EIO);  /* the pipe keeps what was read */
            }
            continue;
        }
        if (a->done > 0 && (drained || a->done >= a->length)) return SIZET2NUM(a->done);

        n = splice(a->from, NULL, p->fds[1], NULL,
                   a->length - a->done < p->capacity ? a->length - a->done : p->capacity,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            drained = (size_t)n < p->capacity && (size_t)n < a->length - a->done;
            left = n;
            a->dirty[0] = 1;
        }
        else if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
            if (splice_at_urgent_mark_p(a->from)) return a->done > 0 ? SIZET2NUM(a->done) : Qnil;
            if (a->done > 0) return SIZET2NUM(a->done);
            if (n == 0) return INT2FIX(0);
            {
                int32_t r = hook_poll(s, &a->hook, a->from, POLLIN, NULL);
                if (r < 0 && r != -EINTR && r != -ECANCELED) return INT2NUM(r);
            }
        }
        else if (errno != EINTR) {
            int e = errno;
            if (a->done == 0 && splice_refused_p(-e)) return Qnil;
            return INT2NUM(-e);
        }
    }
}

static VALUE
splice_body(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;

    if (a->direct) return splice_direct(a);
    splice_files_take(a);
    return splice_transfer(ptr);
}

/* Leaving #io_splice, also by an exception: the pipes go back (or are
 * closed), and a file read at its position is left just past the bytes
 * written to `to`, as read(2) and write(2) would have left it. */
static VALUE
splice_leave(VALUE ptr)
{
    struct splice_args *a = (struct splice_args *)ptr;
    int k;

    hook_leave(a->s, &a->hook);
    splice_files_give(a);
    for (k = 0; k < a->nouts; k++) {
        int32_t put = a->ops[a->outs[k]].result;
        if (put > 0) a->done += put;
    }
    /* Not after IO#close interrupted the hook: the descriptor is closed
     * (or closing) and its number may already be another file's. */
    if (a->advance_from && NIL_P(a->hook.interrupt)) {
        lseek(a->from, a->from_offset + (off_t)a->done, SEEK_SET);
    }
    for (k = 0; k < SPLICE_CHUNKS; k++) {
        pipe_give(a->s, &a->pipes[k], !a->dirty[k]);
    }
    return Qnil;
}

/*
 *  call-seq: io_splice(from, from_offset, to, to_offset, length) -> copied length, 0, -errno or nil
 *
 *  Copies up to +length+ bytes from +from+ to +to+ through a pipe of the
 *  scheduler's pool (1 MiB each where the system allows): no byte is
 *  copied to user space.  Between non-blocking pipes and sockets (all
 *  that ruby makes), with splice(2) itself: IORING_OP_SPLICE always runs in one of io_uring's worker
 *  threads, a thread hop per splice that these descriptors do not need; a
 *  side that is not ready is waited for with IORING_OP_POLL_ADD.  With a
 *  regular file at either end, whose reads and writes may wait for the
 *  disk, or a blocking descriptor, with IORING_OP_SPLICE: up to two
 *  pipefuls in flight in one submission, as a chain of linked splices.  A regular file read at its
 *  position is read at explicit offsets, and its position is then set just
 *  past the bytes written to +to+.  Returns the bytes copied (at least
 *  one), 0 at end of file, a negated errno, or nil (nothing copied) for a
 *  destination opened with O_APPEND or O_DIRECT, a descriptor splice(2)
 *  does not support, or a TCP source at urgent data (MSG_OOB), which
 *  splice(2) does not step over and read(2) does.  Linked operations
 *  name +from+ and +to+ through the ring's table of registered files, and
 *  every splice(2) follows a check for IO#close, so an IO#close from
 *  another thread (which does not wait for this fiber) cannot redirect the
 *  copy to a file that reuses a number.  See Fiber::Scheduler#io_splice.
 */
VALUE
scheduler_io_splice(VALUE self, VALUE from, VALUE from_offset, VALUE to, VALUE to_offset, VALUE length)
{
    struct splice_args a;
    struct stat st;
    mode_t from_mode;
    int flags, k;

    memset(&a, 0, sizeof(a));
    a.s = scheduler_get(self);
    a.from = rb_io_descriptor(from);
    a.to = rb_io_descriptor(to);
    a.from_offset = NIL_P(from_offset) ? -1 : NUM2OFFT(from_offset);
    a.to_offset = NIL_P(to_offset) ? -1 : NUM2OFFT(to_offset);
    a.length = NUM2SIZET(length);
    if (a.length == 0) return INT2FIX(0);
    if (a.length > 0x7ffff000) a.length = 0x7ffff000;

    /* splice(2) refuses O_APPEND with EINVAL once bytes are in the pipe */
    flags = fcntl(a.to, F_GETFL);
    if (flags < 0 || (flags & O_APPEND)) return Qnil;
#ifdef O_DIRECT
    if (flags & O_DIRECT) return Qnil;     /* nor would a pipeful be aligned */
#endif

    from_mode = fstat(a.from, &st) == 0 ? st.st_mode : 0;
    if (S_ISREG(from_mode)) {
        /* Bytes read from a file but not written (EPIPE, an interrupt)
         * must not move its position: read it at offsets, set the
         * position after. */
        if (a.from_offset < 0) {
            off_t position = lseek(a.from, 0, SEEK_CUR);
            if (position >= 0) {
                a.from_offset = position;
                a.advance_from = 1;
            }
        }
    }
    else if (a.from_offset < 0 && a.to_offset < 0 && (flags & O_NONBLOCK)) {
        /* A file's reads and writes may wait for the disk, and a blocking
         * socket's splice(2) would wait in the kernel, the whole thread
         * with it: those stay on the ring's workers.  Non-blocking pipes
         * and sockets (all that ruby makes) never block the thread. */
        int from_flags = fcntl(a.from, F_GETFL);

        a.direct = from_flags >= 0 && (from_flags & O_NONBLOCK) &&
            fstat(a.to, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) &&
            (S_ISFIFO(from_mode) || S_ISSOCK(from_mode));
    }

    for (k = 0; k < SPLICE_CHUNKS; k++) a.pipes[k].fds[0] = a.pipes[k].fds[1] = -1;
    a.pair = -1;
    hook_enter(a.s, &a.hook, "io_splice", a.from);
    return rb_ensure(splice_body, (VALUE)&a, splice_leave, (VALUE)&a);
}
