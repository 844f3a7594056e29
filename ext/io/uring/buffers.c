/**********************************************************************

  io/uring/buffers.c - registered buffers of IO::Uring::Scheduler:
  #io_buffer_register, #io_buffer_unregister, #io_buffer_stats.

  The ring gets a sparse table of FIXED_SLOTS buffer slots with the first
  registration (io_uring_register_buffers_sparse); each registered
  IO::Buffer fills one slot (io_uring_register_buffers_update_tag), and an
  empty iovec empties it again.  A read or write whose bytes lie inside a
  registered buffer (the buffer itself, or any slice of it) is submitted
  as IORING_OP_READ_FIXED / IORING_OP_WRITE_FIXED naming the slot: the
  kernel skips pinning the pages for each operation.  Any refusal falls
  back to the ordinary operation.

  A registered buffer holds a lock (counted: its operations take their
  own) and is marked by the scheduler.  Registrations end with
  #io_buffer_unregister or #close; a forked child forgets them without
  touching the ring, which is its parent's.

**********************************************************************/

#include "uring.h"

#include <sys/uio.h>

#define FIXED_SLOTS 1024
#define FIXED_MAX_SIZE ((size_t)1 << 30)    /* the kernel's limit per buffer */

static void
buffer_type_check(VALUE buffer)
{
    if (!rb_obj_is_kind_of(buffer, rb_cIOBuffer)) {
        rb_raise(rb_eTypeError, "wrong argument type %"PRIsVALUE" (expected IO::Buffer)", rb_obj_class(buffer));
    }
}

static void
fixed_check(VALUE buffer, void **base, size_t *size)
{
    enum rb_io_buffer_flags flags;

    buffer_type_check(buffer);
    flags = rb_io_buffer_get_bytes(buffer, base, size);
    if (!*base || *size == 0) rb_raise(rb_eArgError, "cannot register a null buffer");
    if (flags & RB_IO_BUFFER_READONLY) rb_raise(rb_eArgError, "cannot register a read-only buffer");
    if (!(flags & (RB_IO_BUFFER_INTERNAL | RB_IO_BUFFER_MAPPED)) ||
        (flags & (RB_IO_BUFFER_EXTERNAL | RB_IO_BUFFER_FILE | RB_IO_BUFFER_SHARED))) {
        rb_raise(rb_eArgError, "cannot register a buffer that does not own anonymous memory "
                 "(a slice, or the memory of a String or a file)");
    }
    if (*size > FIXED_MAX_SIZE) rb_raise(rb_eArgError, "cannot register a buffer larger than 1 GiB");
}

static int
fixed_find(struct uring_scheduler *s, VALUE buffer)
{
    int i;

    for (i = 0; i < s->fixed_high; i++) {
        if (s->fixed[i].buffer == buffer) return i;
    }
    return -1;
}

static int
fixed_table(struct uring_scheduler *s)
{
    if (s->fixed_state == 0) {
        int ret = io_uring_register_buffers_sparse(&s->ring, FIXED_SLOTS);

        if (ret < 0) {
            s->fixed_state = -ret;
            return 0;
        }
        s->fixed = ZALLOC_N(struct fixed_buffer, FIXED_SLOTS);
        s->fixed_state = -1;
    }
    return s->fixed_state == -1;
}

/*
 *  call-seq: io_buffer_register(buffer) -> true or false
 *
 *  Registers +buffer+ in a slot of the ring's buffer table: reads and
 *  writes into it, or into a slice of it, become IORING_OP_READ_FIXED and
 *  IORING_OP_WRITE_FIXED.  See Fiber::Scheduler#io_buffer_register for the
 *  contract; false when the table is full (1,024 buffers) or the kernel
 *  refuses (ENOMEM beyond RLIMIT_MEMLOCK, ...).
 */
static VALUE
scheduler_io_buffer_register(VALUE self, VALUE buffer)
{
    struct uring_scheduler *s = scheduler_get(self);
    struct iovec iov;
    void *base;
    size_t size;
    int slot, ret;

    fixed_check(buffer, &base, &size);
    if (s->fixed && fixed_find(s, buffer) >= 0) return Qtrue;
    if (!fixed_table(s)) return Qfalse;
    for (slot = 0; slot < FIXED_SLOTS && s->fixed[slot].buffer; slot++);
    if (slot == FIXED_SLOTS) return Qfalse;

    iov.iov_base = base;
    iov.iov_len = size;
    ret = io_uring_register_buffers_update_tag(&s->ring, (unsigned)slot, &iov, NULL, 1);
    if (ret < 0) {
        s->fixed_refusals++;
        return Qfalse;
    }
    rb_io_buffer_lock(buffer);
    s->fixed[slot].buffer = buffer;
    s->fixed[slot].base = base;
    s->fixed[slot].size = size;
    s->nfixed++;
    if (slot >= s->fixed_high) s->fixed_high = slot + 1;
    return Qtrue;
}

/* Empty `slot` in the scheduler's records; the ring's too if `ring`. */
static void
fixed_drop(struct uring_scheduler *s, int slot, int ring)
{
    VALUE buffer = s->fixed[slot].buffer;

    if (ring) {
        struct iovec iov = {NULL, 0};
        io_uring_register_buffers_update_tag(&s->ring, (unsigned)slot, &iov, NULL, 1);
    }
    memset(&s->fixed[slot], 0, sizeof(s->fixed[slot]));
    s->nfixed--;
    while (s->fixed_high > 0 && !s->fixed[s->fixed_high - 1].buffer) s->fixed_high--;
    rb_io_buffer_try_unlock(buffer);
}

/*
 *  call-seq: io_buffer_unregister(buffer) -> true or false
 *
 *  Empties +buffer+'s slot and releases its lock; false if it was not
 *  registered.
 */
static VALUE
scheduler_io_buffer_unregister(VALUE self, VALUE buffer)
{
    struct uring_scheduler *s = scheduler_get(self);
    int slot;

    buffer_type_check(buffer);
    if (!s->fixed || (slot = fixed_find(s, buffer)) < 0) return Qfalse;
    fixed_drop(s, slot, 1);
    return Qtrue;
}

/* #close, and a forked child (without touching the parent's ring): every
 * registration ends and its buffer is unlocked.  With the GVL. */
void
fixed_release(struct uring_scheduler *s, int ring)
{
    int i;

    if (!s->fixed) return;
    for (i = 0; i < s->fixed_high; i++) {
        if (s->fixed[i].buffer) fixed_drop(s, i, ring);
    }
    ruby_xfree(s->fixed);
    s->fixed = NULL;
    s->fixed_state = 0;
    s->fixed_high = 0;
}

/*
 *  call-seq: io_buffer_stats -> hash
 *
 *  What registration does here: +registered+ buffers and their +bytes+,
 *  +fixed_operations+ made with READ_FIXED/WRITE_FIXED since the scheduler
 *  was made, +refusals+ of the kernel, and +table+: +true+ once the ring
 *  has a buffer table, +nil+ before, or the Errno class of the kernel's
 *  refusal (Errno::ENOMEM, ...).
 */
static VALUE
scheduler_io_buffer_stats(VALUE self)
{
    struct uring_scheduler *s = rb_check_typeddata(self, &scheduler_type);
    VALUE stats = rb_hash_new();
    size_t bytes = 0;
    int i;

    for (i = 0; i < s->fixed_high; i++) bytes += s->fixed[i].size;
    rb_hash_aset(stats, ID2SYM(rb_intern("registered")), INT2NUM(s->nfixed));
    rb_hash_aset(stats, ID2SYM(rb_intern("bytes")), SIZET2NUM(bytes));
    rb_hash_aset(stats, ID2SYM(rb_intern("fixed_operations")), ULONG2NUM(s->fixed_ops));
    rb_hash_aset(stats, ID2SYM(rb_intern("refusals")), ULONG2NUM(s->fixed_refusals));
    rb_hash_aset(stats, ID2SYM(rb_intern("table")),
                 s->fixed_state == -1 ? Qtrue :
                 s->fixed_state == 0 ? Qnil : rb_obj_class(rb_syserr_new(s->fixed_state, NULL)));
    return stats;
}

void
Init_uring_buffers(VALUE cScheduler)
{
    rb_define_method(cScheduler, "io_buffer_register", scheduler_io_buffer_register, 1);
    rb_define_method(cScheduler, "io_buffer_unregister", scheduler_io_buffer_unregister, 1);
    rb_define_method(cScheduler, "io_buffer_stats", scheduler_io_buffer_stats, 0);
}
