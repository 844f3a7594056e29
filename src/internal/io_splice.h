#ifndef INTERNAL_IO_SPLICE_H                             /*-*-C-*-vi:se ft=c:*/
#define INTERNAL_IO_SPLICE_H
/**
 * @brief      IO.copy_stream without user space buffers.
 *
 * Between two descriptors, IO.copy_stream first offers the copy to one of
 * these, then does what is left with its read(2)/write(2) loop:
 *
 * - rb_io_copy_stream_hook(): in a non-blocking fiber, through
 *   Fiber::Scheduler#io_splice;
 * - rb_io_copy_stream_splice(): otherwise, when the source is a pipe or a
 *   socket (copy_file_range(2) and sendfile(2) serve regular files), with
 *   splice(2) through a pipe, on the copying thread without the GVL.
 *
 * Both take and update a struct rb_io_splice_copy.  They return
 * RB_IO_SPLICE_DONE when the copy is complete (end of file, or the length
 * copied), RB_IO_SPLICE_FAILED with syserr and error_no set as IO.copy_stream
 * reports a failed system call, or RB_IO_SPLICE_FALLBACK when the rest of the
 * copy (all of it, or what `length`, `src_offset` and `total` now say) is
 * the caller's: nothing is left in flight or in a pipe.
 */
#include "ruby/ruby.h"
#include "internal/io.h"
#include <sys/stat.h>

struct rb_io_splice_copy {
    VALUE src, dst;             /* IOs; dst is the write IO */
    struct rb_io *src_fptr, *dst_fptr;
    mode_t src_mode, dst_mode;  /* st_mode of their descriptors */
    rb_off_t src_offset;        /* pread(2)-like offset, or -1: file position */
    rb_off_t length;            /* bytes left to copy, or -1: to end of file */
    rb_off_t total;             /* bytes copied: added to */
    const char *syserr;         /* RB_IO_SPLICE_FAILED: the failed call ... */
    int error_no;               /* ... and its errno */
};

enum rb_io_splice_result {
    RB_IO_SPLICE_FAILED = -1,
    RB_IO_SPLICE_FALLBACK = 0,
    RB_IO_SPLICE_DONE = 1
};

int rb_io_copy_stream_hook(VALUE scheduler, struct rb_io_splice_copy *copy);
int rb_io_copy_stream_splice(struct rb_io_splice_copy *copy);

RUBY_SYMBOL_EXPORT_BEGIN
/* Nonzero (the default) lets rb_io_copy_stream_splice() copy; tests clear
 * it to compare with the ordinary loop. */
extern int rb_io_copy_stream_splice_enabled;
RUBY_SYMBOL_EXPORT_END

#endif /* INTERNAL_IO_SPLICE_H */
