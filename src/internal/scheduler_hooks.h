#ifndef INTERNAL_SCHEDULER_HOOKS_H                       /*-*-C-*-vi:se ft=c:*/
#define INTERNAL_SCHEDULER_HOOKS_H
/**
 * @brief  Fiber::Scheduler hooks implemented in scheduler_hooks.c.
 */
#include "ruby/ruby.h"

void Init_scheduler_hooks(void);

/* Does `scheduler` implement #fiber_interrupt? */
int rb_fiber_scheduler_interruptible_p(VALUE scheduler);

/* Calls an I/O hook on `io`, registered as a user of its descriptor. */
VALUE rb_fiber_scheduler_io_hook(VALUE scheduler, VALUE io, ID mid, int argc, const VALUE *argv, int required);

/* Lets `scheduler` close `fd`: 1 if it did (*eno: errno of a failed close). */
int rb_fiber_scheduler_io_close_fd(VALUE scheduler, int fd, int *eno);

/* Fork: the child's thread drops its scheduler (rb_thread_atfork), then the
 * forking method offers it #process_fork. */
struct rb_thread_struct;
void rb_fiber_scheduler_atfork(struct rb_thread_struct *th);
VALUE rb_fiber_scheduler_fork_child(void);

/* #process_wait(handle, flags) for a handle the scheduler adopted through
 * #process_open, registered as a user of its pidfd `io`: Qundef when the
 * scheduler does not implement #process_wait. */
VALUE rb_fiber_scheduler_process_wait_handle(VALUE scheduler, VALUE handle, VALUE io, int flags);

#endif /* INTERNAL_SCHEDULER_HOOKS_H */
