#ifndef INTERNAL_PROCESS_HANDLE_H                       /*-*-C-*-vi:se ft=c:*/
#define INTERNAL_PROCESS_HANDLE_H
/**
 * @brief  Process::Handle (process_handle.c): a child process held by a
 *         pidfd where Linux has one.
 */
#include "ruby/ruby.h"

void Init_process_handle(void);

/* Is `obj` a Process::Handle? */
int rb_process_handle_p(VALUE obj);

/* Process.kill(sig, handle): signals through the pidfd; a negative `sig`
 * signals the process group.  Raises like kill(2). */
void rb_process_handle_kill(VALUE handle, int sig);

/* Process.wait(handle, flags) and friends: the status, nil for WNOHANG
 * while the child runs, or a pid -1 status carrying the errno (ECHILD),
 * as rb_process_status_wait() returns them. */
VALUE rb_process_handle_status_wait(VALUE handle, int flags);

/* Process.detach(handle). */
VALUE rb_process_handle_detach(VALUE handle);

/* From the SIGCHLD handling of the main thread: reaps detached handles
 * whose process has exited. */
void rb_process_handle_sweep(void);

/* Spawn: process.c creates the child with clone(2) and CLONE_PIDFD, with
 * or without a shared address space (vfork- or fork-like), running `fn`
 * on a stack of its own.  Returns the pid (and *pidfd, or -1 when the
 * kernel gave none) or -1 with errno. */
rb_pid_t rb_process_handle_clone(int (*fn)(void *), void *arg, int share_vm, int *pidfd);

/* Spawn, after exec failed in the child: reaps it through the pidfd and
 * closes the pidfd. */
void rb_process_handle_reap_failed(int pidfd);

/* Fork: set by Process::Handle.fork for the thread that forks.  NULL when
 * the current thread did not ask for a pidfd. */
struct rb_process_handle_fork;
struct rb_process_handle_fork *rb_process_handle_fork_request(void);
/* In the child, right after fork(): waits until the parent holds a pidfd
 * (`req` NULL: the fork was not Process::Handle.fork's), and drops the
 * requests of the parent's other threads. */
void rb_process_handle_fork_child(struct rb_process_handle_fork *req);
/* In the parent, right after fork(): opens the pidfd, lets the child go. */
void rb_process_handle_fork_parent(struct rb_process_handle_fork *req, rb_pid_t pid);

/* Process::Handle.spawn: Process.spawn that also returns a pidfd (-1 when
 * none could be had). */
VALUE rb_process_spawn_pidfd(int argc, const VALUE *argv, int *pidfd);

#endif /* INTERNAL_PROCESS_HANDLE_H */
