/**********************************************************************

  io_uring.c - a lazily created io_uring per native thread, held by one
               caller at a time, for CRuby's own blocking operations.

  See internal/io_uring.h for the interface.

**********************************************************************/

#include "ruby/internal/config.h"
#include "internal/io_uring.h"

#if USE_IO_URING

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ruby/ruby.h"
#include "ruby/thread.h"
#include "ccan/list/list.h"

/* Ruby's own operations are few and synchronous: a small ring will do. */
#define RING_ENTRIES 64

/*
 * A native thread's ring.  Under M:N threads several Ruby threads take turns
 * on one native thread, and a Ruby thread may go on on another native thread
 * after any GVL release, so the ring is not simply "the thread's": a caller
 * holds it from rb_io_uring_get() to rb_io_uring_release(), and nobody else
 * submits to it or reaps from it meanwhile (a reap would consume the other's
 * completions, and IORING_ASYNC_CANCEL_ANY cancel the other's operations).
 * The holder may use it from whichever native thread it runs on.
 *
 * held, owner and orphan are under rings_lock: rings of different Ractors'
 * threads are not serialized by one GVL.
 */
struct thread_ring {
    struct io_uring ring;
    struct ccan_list_node node;     /* in `rings` */
    bool held;          /* between rb_io_uring_get() and rb_io_uring_release() */
    VALUE owner;        /* the Ruby thread that holds it */
    bool orphan;        /* its native thread exited while it was held */
    bool dead;          /* torn down (it broke): no queues, no descriptor */
    /* What rb_io_uring_sqe() hands out for a dead ring; the wait then fails. */
    struct io_uring_sqe scratch;
};

enum ring_availability {
    RING_UNKNOWN = 0,   /* no ring was set up yet */
    RING_AVAILABLE,     /* a ring was set up: the kernel supports io_uring */
    RING_REFUSED,       /* the kernel (or RUBY_IO_URING=0) refused io_uring */
};

#define RING_OF(r) ccan_container_of((r), struct thread_ring, ring)

static pthread_key_t ring_key;
static int ring_key_error;
static volatile enum ring_availability availability;

/* Every ring of the process, so a forked child can drop them all. */
static pthread_mutex_t rings_lock = PTHREAD_MUTEX_INITIALIZER;
static CCAN_LIST_HEAD(rings);

/* Opcodes the kernel supports, from the first ring's probe. */
static unsigned char supported_ops[IORING_OP_LAST];

/* Frees a ring already taken off `rings`. */
static void
ring_free(struct thread_ring *t)
{
    if (!t->dead) io_uring_queue_exit(&t->ring);
    free(t);
}

/* pthread key destructor: the native thread is exiting.  A ring that a Ruby
 * thread now running elsewhere still holds is freed by its release. */
static void
ring_thread_exit(void *ptr)
{
    struct thread_ring *t = ptr;
    bool held;

    pthread_mutex_lock(&rings_lock);
    held = t->held;
    if (held) {
        t->orphan = true;
    }
    else {
        ccan_list_del(&t->node);
    }
    pthread_mutex_unlock(&rings_lock);
    if (!held) ring_free(t);
}

static void
ring_atfork_prepare(void)
{
    pthread_mutex_lock(&rings_lock);
}

static void
ring_atfork_parent(void)
{
    pthread_mutex_unlock(&rings_lock);
}

static int ring_setup(struct io_uring *ring);

/*
 * In a forked child every ring belongs to the parent, whose submission and
 * completion queues are shared memory.  Unmap them and close our copies of
 * the descriptors without submitting anything; the parent's rings are
 * untouched.  The forking thread gets a fresh ring on its next use.
 *
 * The forking thread may hold a ring (a trap handler that forks during
 * IO.copy_stream, between two of its rounds: nothing is in flight): that
 * one gets a new ring of the child's in place, so the holder goes on with
 * it.  Rings held by the parent's other threads go with those threads.
 */
static void
ring_atfork_child(void)
{
    struct thread_ring *t, *next, *mine = pthread_getspecific(ring_key);
    VALUE current = ruby_native_thread_p() ? rb_thread_current() : Qfalse;

    ccan_list_for_each_safe(&rings, t, next, node) {
        if (t->held && t->owner == current) {
            if (!t->dead) io_uring_queue_exit(&t->ring);
            t->dead = ring_setup(&t->ring) < 0;
            t->orphan = t != mine;
            continue;
        }
        if (t == mine) mine = NULL;
        ccan_list_del(&t->node);
        ring_free(t);
    }
    pthread_setspecific(ring_key, mine);
    pthread_mutex_unlock(&rings_lock);
}

static void
ring_probe(struct io_uring *ring)
{
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    int op;

    if (!probe) return;
    for (op = 0; op < IORING_OP_LAST; op++) {
        supported_ops[op] = io_uring_opcode_supported(probe, op) ? 1 : 0;
    }
    io_uring_free_probe(probe);
}

/*
 * Not IORING_SETUP_SINGLE_ISSUER: under M:N threads the holder of a ring
 * may submit from another native thread than the one that made it, which
 * that flag refuses with EEXIST.  Not IORING_SETUP_DEFER_TASKRUN (which
 * needs it): its deferred work, which includes dropping the file references
 * of requests an io-wq worker finished, runs only when the submitter next
 * enters the ring.  A thread that copied with splice and then closed the
 * socket may never enter it again, and the peer would wait for an end of
 * file that never comes.
 */
static int
ring_setup(struct io_uring *ring)
{
    struct io_uring_params params;

    memset(&params, 0, sizeof(params));
    return io_uring_queue_init_params(RING_ENTRIES, ring, &params);
}

static struct thread_ring *
ring_create(void)
{
    struct thread_ring *t = calloc(1, sizeof(*t));
    int ret;

    if (!t) return NULL;
    t->owner = Qfalse;

    ret = ring_setup(&t->ring);
    if (ret < 0) {
        free(t);
        switch (-ret) {
          case ENOSYS:     /* not built into the kernel */
          case EPERM:      /* kernel.io_uring_disabled, io_uring_group */
          case EACCES:     /* an LSM said no */
          case EOPNOTSUPP:
            availability = RING_REFUSED;
            break;
          default:         /* EMFILE, ENOMEM, ...: maybe later */
            break;
        }
        errno = -ret;
        return NULL;
    }

    if (availability != RING_AVAILABLE) {
        ring_probe(&t->ring);
        availability = RING_AVAILABLE;
    }
    return t;
}

/* The calling native thread's ring, made if it has none (or a dead one
 * nobody holds); not held. */
static struct thread_ring *
ring_of_native_thread(void)
{
    struct thread_ring *t;

    if (availability == RING_REFUSED) {
        errno = EPERM;
        return NULL;
    }
    if (ring_key_error) {
        errno = ring_key_error;
        return NULL;
    }

    t = pthread_getspecific(ring_key);
    if (t) {
        bool stale;

        pthread_mutex_lock(&rings_lock);
        stale = t->dead && !t->held;
        if (stale) ccan_list_del(&t->node);
        pthread_mutex_unlock(&rings_lock);
        if (!stale) return t;
        pthread_setspecific(ring_key, NULL);
        ring_free(t);
    }

    t = ring_create();
    if (!t) return NULL;

    pthread_mutex_lock(&rings_lock);
    ccan_list_add(&rings, &t->node);
    pthread_mutex_unlock(&rings_lock);
    pthread_setspecific(ring_key, t);
    return t;
}

struct io_uring *
rb_io_uring_get(void)
{
    struct thread_ring *t = ring_of_native_thread();
    bool busy;

    if (!t) return NULL;
    pthread_mutex_lock(&rings_lock);
    busy = t->held;
    if (!busy) {
        t->held = true;
        t->owner = rb_thread_current();
    }
    pthread_mutex_unlock(&rings_lock);
    if (busy) {
        /* Another Ruby thread on this native thread (M:N), or an outer
         * use by this one: the caller takes its ordinary path. */
        errno = EBUSY;
        return NULL;
    }
    return &t->ring;
}

void
rb_io_uring_release(struct io_uring *ring)
{
    struct thread_ring *t = RING_OF(ring);
    bool orphan;

    pthread_mutex_lock(&rings_lock);
    t->held = false;
    t->owner = Qfalse;
    orphan = t->orphan;
    if (orphan) ccan_list_del(&t->node);
    pthread_mutex_unlock(&rings_lock);
    if (orphan) ring_free(t);
}

bool
rb_io_uring_supported_p(int opcode)
{
    if (opcode < 0 || opcode >= IORING_OP_LAST) return false;
    if (availability != RING_AVAILABLE && !ring_of_native_thread()) return false;
    return supported_ops[opcode] != 0;
}

struct io_uring_sqe *
rb_io_uring_sqe(struct io_uring *ring, struct rb_io_uring_op *op)
{
    struct thread_ring *t = RING_OF(ring);
    struct io_uring_sqe *sqe = t->dead ? &t->scratch : io_uring_get_sqe(ring);

    if (!sqe) return NULL;
    op->result = 0;
    op->flags = 0;
    op->done = 0;
    io_uring_sqe_set_data(sqe, op);
    return sqe;
}

struct ring_wait {
    struct io_uring *ring;
    int pending;        /* operations not completed yet */
    int error;          /* negated errno of the last io_uring_enter */
    bool called;        /* the blocking function ran */
};

/* A kernel that meets a signal inside a worker can hand the internal
 * restart codes (ERESTARTSYS and kin, 512-516) to the completion, as
 * IORING_OP_SPLICE does: they mean "interrupted, nothing moved". */
static int
cqe_result(int res)
{
    if (res <= -512 && res >= -516) return -EINTR;
    return res;
}

/* Record every completion available.  Entries with no op (cancellation
 * requests) are only consumed. */
static void
ring_reap(struct ring_wait *w)
{
    struct io_uring_cqe *cqe;
    unsigned int head, seen = 0;

    io_uring_for_each_cqe(w->ring, head, cqe) {
        struct rb_io_uring_op *op = io_uring_cqe_get_data(cqe);

        if (op) {
            op->result = cqe_result(cqe->res);
            op->flags = cqe->flags;
            op->done = 1;
            w->pending--;
        }
        seen++;
    }
    io_uring_cq_advance(w->ring, seen);
}

/* Submit what is queued and wait for one completion, without the GVL.
 * A signal (ubf_select's, for a Ruby interrupt) ends the wait with -EINTR. */
static void *
ring_wait_nogvl(void *ptr)
{
    struct ring_wait *w = ptr;
    int ret;

    w->called = true;
    ret = io_uring_submit_and_wait(w->ring, 1);
    w->error = ret < 0 ? ret : 0;
    return NULL;
}

static bool
ring_enter_error_p(int ret)
{
    return ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY;
}

/*
 * The ring failed (its descriptor was closed behind our back, say): tear it
 * down, which makes the kernel cancel what is still in flight.  The struct
 * stays until its holder lets go (a later wait fails at once), then the
 * next rb_io_uring_get() on its native thread makes a new ring.
 */
static void
ring_discard(struct io_uring *ring)
{
    struct thread_ring *t = RING_OF(ring);

    if (t->dead) return;
    io_uring_queue_exit(ring);
    t->dead = true;
}

/* Cancel everything in flight and wait for all of it to complete.  The GVL
 * stays held: cancellation completes promptly, and until it has, the memory
 * the kernel writes to must not be reused.  An operation hard linked to a
 * cancelled one starts once that one completes, so the cancellation is
 * repeated after every completion.  Returns 0, or the error that broke the
 * ring. */
static int
ring_cancel_and_drain(struct ring_wait *w)
{
    bool cancelled = false;

    while (w->pending > 0) {
        int ret, before = w->pending;

        if (!cancelled) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(w->ring);

            if (!sqe) {
                io_uring_submit(w->ring);
                sqe = io_uring_get_sqe(w->ring);
            }
            if (sqe) {
                io_uring_prep_cancel(sqe, NULL, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data(sqe, NULL);
                cancelled = true;
            }
        }
        ret = io_uring_submit_and_wait(w->ring, 1);
        if (ring_enter_error_p(ret)) return ret;
        ring_reap(w);
        if (w->pending < before) cancelled = false;
    }
    return 0;
}

int
rb_io_uring_wait(struct io_uring *ring, struct rb_io_uring_op *ops, int count)
{
    struct ring_wait w;
    int i, ret;

    w.ring = ring;
    w.pending = 0;
    w.error = 0;
    for (i = 0; i < count; i++) {
        if (!ops[i].done) w.pending++;
    }

    if (RING_OF(ring)->dead) {
        /* Its entries were scratch: nothing was submitted. */
        for (i = 0; i < count; i++) {
            if (!ops[i].done) {
                ops[i].result = -ECANCELED;
                ops[i].done = 1;
            }
        }
        return -EBADF;
    }

    /* Many operations complete while they are submitted: try that before
     * paying for a GVL release. */
    ret = io_uring_submit(ring);
    if (ring_enter_error_p(ret)) w.error = ret;
    ring_reap(&w);

    while (w.pending > 0 && w.error == 0) {
        w.called = false;
        rb_thread_call_without_gvl2(ring_wait_nogvl, &w, RUBY_UBF_IO, 0);
        ring_reap(&w);
        if (w.pending == 0) break;

        if (!w.called ||
            (w.error == -EINTR && rb_thread_interrupted(rb_thread_current()))) {
            ret = ring_cancel_and_drain(&w);
            if (ret == 0) return -EINTR;
            w.error = ret;
            break;
        }
        if (!ring_enter_error_p(w.error)) {
            w.error = 0;    /* a stray signal, or a full completion queue */
        }
    }

    if (w.error) {
        if (w.pending > 0) ring_cancel_and_drain(&w);
        ring_discard(ring);
        return w.error;
    }
    return 0;
}

#endif /* USE_IO_URING */

void
Init_io_uring(void)
{
#if USE_IO_URING
    const char *env = getenv("RUBY_IO_URING");

    /* RUBY_IO_URING=0 makes ruby behave as if the kernel refused io_uring:
     * a switch for debugging and for testing the fallback paths. */
    if (env && strcmp(env, "0") == 0) {
        availability = RING_REFUSED;
    }
    ring_key_error = pthread_key_create(&ring_key, ring_thread_exit);
    if (ring_key_error == 0) {
        pthread_atfork(ring_atfork_prepare, ring_atfork_parent, ring_atfork_child);
    }
#endif
}
