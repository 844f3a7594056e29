/**********************************************************************

  io/uring/inline.c - inline completion: reads and writes the kernel can
  answer at once, made on the fiber's thread instead of the ring.

  A fiber whose read or write goes to the ring transfers to the loop
  fiber and back, and the loop takes a turn (an io_uring_enter(2) among
  others) before the fiber runs again.  Where the kernel can answer at
  once and nothing is gained by batching, asking it directly is cheaper:
  one system call, no switch.

  The policy, by kind of descriptor (statx(2) once, noted per number):

  - Regular files, block and character devices: tried first with
    RWF_NOWAIT (preadv2/pwritev2), which the kernel refuses to wait for.
    A page-cache hit, or /dev/null, completes inline; EAGAIN (a miss, an
    O_DIRECT transfer that would wait) goes to the ring.  A descriptor
    whose file system refuses RWF_NOWAIT for a direction (EOPNOTSUPP:
    buffered writes on ext4 and tmpfs, reads on tmpfs, on Linux 6.18) is
    noted and goes straight to the ring for that direction, where io_uring
    hands it to an io-wq worker.  Making those writes with pwrite(2) on
    the fiber's thread was measured (bench/suite.rb mutex_io, ext4): 10 %
    less CPU, 15 % more wall time on 2 cores (the worker overlapped the
    writes with the loop), and a thread that a slow disk or a network file
    system can stop: not kept.
  - Files opened with O_DIRECT: never.  RWF_NOWAIT does not keep a direct
    read from waiting for the device (it is issued and waited for on the
    fiber's thread): 32 fibers reading 4 KiB at random made 20,000 reads
    a second inline, one at a time, where the ring keeps them in flight
    together.
  - Pipes, FIFOs and sockets: never.  Tried when the loop had nothing
    else queued, a write with room saved no time and a read that found
    nothing cost a system call: one pair of fibers in ping-pong took 10 %
    longer, 48 pairs of pipes no less (bench/suite.rb, bench/pingpong.rb).
    In the ring, a fiber's write and its next read go to the kernel in
    one io_uring_enter(2) with everyone else's.
  - Fairness: once inline completions have kept the thread for
    INLINE_SLICE_NS since the loop's last turn, the next operation goes
    to the ring, so a fiber writing a large file in small pieces lets the
    others run.

  Every attempt is one that cannot wait, so a note that went stale (a
  number closed and reused) changes only the path taken, never the
  result.  IO::Uring::Scheduler#io_close forgets the notes of the number
  it closes.

**********************************************************************/

#include "uring.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>

#define INLINE_SLICE_NS 1000000     /* inline completions per loop turn: 1 ms */
#define INLINE_UNSUPPORTED 0xff     /* RWF_NOWAIT refused: the ring, always */
#define HINTS_MAX (1 << 20)         /* descriptors noted; above, not noted */

/* Whether the number is a file or device (which RWF_NOWAIT may serve),
 * from statx(2) for the type only: asking for times too (as fstat(2)
 * does) would make the file system give the next write a fine-grained
 * timestamp and dirty the inode (Linux 6.13's multigrain timestamps). */
static void
note_kind(struct fd_hint *h, int fd)
{
    struct statx stx;

    int flags;

    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, &stx) < 0) return;
    h->kind = S_ISREG(stx.stx_mode) || S_ISBLK(stx.stx_mode) || S_ISCHR(stx.stx_mode)
        ? FD_KIND_FILE : FD_KIND_OTHER;
    /* Direct I/O: RWF_NOWAIT keeps the kernel from waiting for locks and
     * request slots, not for the device: the transfer is issued and
     * waited for on this thread, one at a time, where the ring keeps many
     * in flight. */
    if (h->kind == FD_KIND_FILE && (flags = fcntl(fd, F_GETFL)) >= 0 && (flags & O_DIRECT)) {
        h->kind = FD_KIND_OTHER;
    }
}

static struct fd_hint *
hint_for(struct uring_scheduler *s, int fd)
{
    if (fd < 0 || fd >= HINTS_MAX) return NULL;
    if (fd >= s->nhints) {
        int n = s->nhints ? s->nhints : 64;

        while (n <= fd) n *= 2;
        REALLOC_N(s->hints, struct fd_hint, n);
        memset(s->hints + s->nhints, 0, sizeof(struct fd_hint) * (n - s->nhints));
        s->nhints = n;
    }
    return &s->hints[fd];
}

/* The descriptor is closed (or closing): what was noted is another
 * file's once the number is reused. */
void
inline_forget(struct uring_scheduler *s, int fd)
{
    if (fd >= 0 && fd < s->nhints) memset(&s->hints[fd], 0, sizeof(s->hints[fd]));
}

static long long
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * One try at the transfer the ring would make: the bytes transferred, a
 * negated errno (what the ring would have answered), or INLINE_RING when
 * the ring is to do it.
 */
ssize_t
inline_transfer(struct uring_scheduler *s, int fd, int socket, enum io_direction dir,
                void *p, size_t n, off_t at)
{
    struct fd_hint *h;
    unsigned char *miss;
    struct iovec iov;
    ssize_t r;
    int e;

    if (socket) return INLINE_RING;
    if (!(h = hint_for(s, fd))) return INLINE_RING;
    if (h->kind == FD_KIND_UNKNOWN) note_kind(h, fd);
    if (h->kind != FD_KIND_FILE) return INLINE_RING;
    miss = &h->miss[dir];
    if (*miss == INLINE_UNSUPPORTED) return INLINE_RING;
    /* The clock is read at the first inline operation of a loop turn and
     * every 16th after it. */
    if (s->inline_count++ == 0) {
        s->inline_since = now_ns();
    }
    else if ((s->inline_count & 15) == 0 && now_ns() - s->inline_since > INLINE_SLICE_NS) {
        s->inline_count--;
        return INLINE_RING;
    }

    iov.iov_base = p;
    iov.iov_len = n;
    r = dir == IO_READ ? preadv2(fd, &iov, 1, at, RWF_NOWAIT)
                       : pwritev2(fd, &iov, 1, at, RWF_NOWAIT);
    if (r >= 0) return r;
    e = errno;
    switch (e) {
      case EAGAIN:
#if defined(EWOULDBLOCK) && EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
      case EINTR:
        return INLINE_RING;
      case EOPNOTSUPP:
      case EINVAL:              /* no RWF_NOWAIT (kernels before 4.14) */
        *miss = INLINE_UNSUPPORTED;
        return INLINE_RING;
      case EBADF:
        inline_forget(s, fd);
        return -e;
      default:
        return -e;
    }
}
