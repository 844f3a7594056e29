/**********************************************************************

  scheduler_hooks.c - Fiber::Scheduler hooks that need more than a call

  The IO#close protocol: fiber scheduler I/O hooks registered as users of
  their descriptor, #fiber_interrupt, and #io_close with its result (on
  3.4; master has its own, which the other hooks here join).

  The fork contract: a forked child starts without the parent's scheduler,
  which #process_fork may replace.

  #io_splice: a copy between two descriptors done by the scheduler.

  The socket hooks: #socket_recv, #socket_send, #socket_connect,
  #socket_accept and #socket_shutdown, which ext/socket calls.

  Registered buffers: #io_buffer_register and #io_buffer_unregister.

  Transfers kept across interrupts: rb_fiber_scheduler_transfer_call().

  Process handles: #process_open, and #process_wait given a handle.

**********************************************************************/

#include "vm_core.h"
#include "ruby/version.h"
#include "ruby/fiber/scheduler.h"
#include "ruby/io/buffer.h"
#include "internal/numeric.h"
#include "internal/scheduler_hooks.h"
#include "internal/thread.h"

/* Ruby 3.4 gets the IO#close protocol from this file; master (4.1) has its
 * own: IO#close interrupts the operations in the IO's blocking-operation
 * list, with Fiber::Scheduler#fiber_interrupt for fibers. */
#if RUBY_API_VERSION_MAJOR >= 4
# define SCHEDULER_HOOKS_MASTER 1
/* Runs func(arg) as a user of io's descriptor: IO#close interrupts it. */
# define io_user_call(io, func, arg) rb_thread_io_blocking_operation((io), (func), (arg))
#else
# define SCHEDULER_HOOKS_MASTER 0
# define io_user_call(io, func, arg) rb_thread_io_scheduler_call((io), (func), (arg))
#endif

static ID id_fiber_interrupt;
static ID id_process_fork;
static ID id_process_open, id_process_wait;
static ID id_io_splice;
static ID id_io_buffer_register, id_io_buffer_unregister;
static ID id_socket_recv, id_socket_send, id_socket_connect, id_socket_accept, id_socket_shutdown;

/* In a forked child: the scheduler the forking thread had in the parent,
 * until rb_fiber_scheduler_fork_child() has offered it #process_fork. */
static VALUE inherited_scheduler = Qnil;

struct io_hook_call {
    VALUE scheduler;
    ID mid;
    int argc;
    const VALUE *argv;
    int required;
};

static VALUE
io_hook_call(VALUE ptr)
{
    const struct io_hook_call *call = (const struct io_hook_call *)ptr;

    if (call->required) {
        return rb_funcallv(call->scheduler, call->mid, call->argc, call->argv);
    }
    return rb_check_funcall(call->scheduler, call->mid, call->argc, call->argv);
}

/*
 * Calls the I/O hook `mid` of `scheduler` on `io`.  A scheduler that
 * implements #fiber_interrupt gets the hook registered as a user of the
 * descriptor, so that IO#close interrupts it (and, from a non-blocking
 * fiber of the same thread, waits for it); others keep
 * the behaviour of earlier versions.  Without `required`, a missing hook
 * returns Qundef.
 */
VALUE
rb_fiber_scheduler_io_hook(VALUE scheduler, VALUE io, ID mid, int argc, const VALUE *argv, int required)
{
    struct io_hook_call call = {scheduler, mid, argc, argv, required};

    if (rb_fiber_scheduler_interruptible_p(scheduler)) {
        return io_user_call(io, io_hook_call, (VALUE)&call);
    }
    return io_hook_call((VALUE)&call);
}

/* Does `scheduler` take part in the IO#close protocol? */
int
rb_fiber_scheduler_interruptible_p(VALUE scheduler)
{
    return rb_respond_to(scheduler, id_fiber_interrupt);
}

#if !SCHEDULER_HOOKS_MASTER

static VALUE
fiber_interrupt_call(VALUE ptr)
{
    VALUE *args = (VALUE *)ptr;

    return rb_check_funcall(args[0], id_fiber_interrupt, 2, args + 1);
}

/*
 *  Document-method: Fiber::Scheduler#fiber_interrupt
 *  call-seq: fiber_interrupt(fiber, exception)
 *
 *  Invoked by IO#close for every fiber that is inside an I/O hook (#io_wait,
 *  #io_read, #io_write, #io_pread, #io_pwrite, #io_splice) working on the
 *  descriptor being closed.  The scheduler should cancel what the hook waits for and
 *  make the hook raise +exception+ (an IOError, "stream closed in another
 *  thread") in +fiber+.  The return value is ignored.
 *
 *  IO#close waits for +fiber+ to leave its hook before it releases the
 *  descriptor only when the closer is a non-blocking fiber of +fiber+'s own
 *  thread: its scheduler runs meanwhile.  It does not wait when that could
 *  take a loop that may not run before the close returns:
 *
 *  * Called from another thread (the closer's), #fiber_interrupt must make
 *    +fiber+ raise +exception+ as soon as its thread runs the scheduler,
 *    and from its return on, the scheduler must not start any new
 *    operation on the descriptor number for +fiber+: the number may be
 *    given to another file by then.  Operations the kernel has already
 *    issued may complete on the file they hold (an io_uring request holds
 *    its own reference to the file); the file is released when the last
 *    of them completes.  One that is only queued, or linked behind another
 *    and not issued yet, looks the number up later: the scheduler must
 *    keep it from the number (not submit it, or name the file through the
 *    ring's registered files).  Waiting
 *    instead would need the other thread's loop, which does not run while
 *    its root fiber is busy, or waits for something the closer holds.
 *  * Called by a blocking fiber (the thread's root fiber, say) for a fiber
 *    of its own thread, whose scheduler cannot run until the close returns,
 *    #fiber_interrupt must have stopped every use of the descriptor by
 *    +fiber+ before it returns (cancel synchronously).
 *
 *  May be called from any thread.  If it raises, IO#close still closes the
 *  IO (without waiting for +fiber+) and raises the exception afterwards.
 *
 *  Implementing this method opts in: I/O hooks are registered with their
 *  descriptor only for schedulers that respond to it.
 */
VALUE
rb_fiber_scheduler_fiber_interrupt(VALUE scheduler, VALUE fiber, VALUE exception)
{
    rb_execution_context_t *ec = GET_EC();
    int saved_mask = ec->interrupt_mask;
    VALUE args[3] = {scheduler, fiber, exception};
    VALUE result;
    int state;

    /* Thread#raise must not leave the fiber half-interrupted: it is
     * delivered once the hook has returned. */
    ec->interrupt_mask |= PENDING_INTERRUPT_MASK;
    result = rb_protect(fiber_interrupt_call, (VALUE)args, &state);
    ec->interrupt_mask = saved_mask;
    if (state) rb_jump_tag(state);
    RUBY_VM_CHECK_INTS(ec);
    return result;
}

/*
 * Asks `scheduler` to close `fd` (see Fiber::Scheduler#io_close).  Returns
 * true if the scheduler took the descriptor; *eno is then the errno of a
 * failed close, or 0.  Returns false if ruby has to close it.
 */
int
rb_fiber_scheduler_io_close_fd(VALUE scheduler, int fd, int *eno)
{
    VALUE result = rb_fiber_scheduler_io_close(scheduler, INT2NUM(fd));

    *eno = 0;
    if (UNDEF_P(result) || !RTEST(result)) return 0;
    if (RB_INTEGER_TYPE_P(result) && rb_num_negative_int_p(result)) {
        *eno = -NUM2INT(result);
    }
    return 1;
}
#endif /* !SCHEDULER_HOOKS_MASTER */

struct io_splice_call {
    VALUE scheduler;
    VALUE args[5];
};

static VALUE
io_splice_call(VALUE ptr)
{
    struct io_splice_call *call = (struct io_splice_call *)ptr;

    return rb_check_funcall(call->scheduler, id_io_splice, 5, call->args);
}

/* Registered as a user of the destination too: IO#close of either end
 * interrupts the hook. */
static VALUE
io_splice_call_to(VALUE ptr)
{
    struct io_splice_call *call = (struct io_splice_call *)ptr;

    return io_user_call(call->args[2], io_splice_call, ptr);
}

/*
 *  Document-method: Fiber::Scheduler#io_splice
 *  call-seq: io_splice(from, from_offset, to, to_offset, length) -> copied length, 0, -errno or nil
 *
 *  Invoked by IO.copy_stream to copy bytes from the IO +from+ to the IO
 *  +to+ without bringing them into user space (with splice(2) through a
 *  pipe, say), for a non-blocking fiber.  Both IOs are backed by
 *  descriptors; +to+ is the write IO of a duplex one.
 *
 *  * +from_offset+: +nil+ to read at the file position of +from+ and
 *    advance it, as read(2) does; or an Integer, the offset to read at,
 *    leaving the file position alone, as pread(2) does.
 *  * +to_offset+: the same for +to+ (IO.copy_stream always passes +nil+).
 *  * +length+: the most bytes this call may copy.
 *
 *  One call is one transfer of at most +length+ bytes; it may copy fewer,
 *  as read(2) may.  A hook may wait (suspending the fiber) until it can
 *  copy, or return -EAGAIN instead: the caller then waits with #io_wait
 *  for +from+ to be readable and +to+ to be writable, and calls it again.
 *  Returns:
 *
 *  * the number of bytes copied, every one of them written to +to+;
 *  * 0 at end of file of +from+, nothing copied;
 *  * -EAGAIN, nothing copied, if the copy would have had to wait (a
 *    second -EAGAIN in a row, after both waits, leaves the rest of the
 *    copy to IO.copy_stream's own loop);
 *  * another negated errno if reading +from+ or writing +to+ failed;
 *  * +nil+ if the scheduler does not do this copy (the kind of descriptor,
 *    an +O_APPEND+ destination, a kernel that refuses), having copied
 *    nothing.  IO.copy_stream then copies the rest itself, as when the
 *    scheduler does not implement the hook.
 *
 *  Bytes read from +from+ but not written when the hook fails or is
 *  interrupted are lost, as those in the buffer of a read(2)/write(2) loop
 *  would be.  Like the other I/O hooks, #io_splice is registered as a user
 *  of both descriptors when the scheduler implements #fiber_interrupt, so
 *  IO#close of either end interrupts it.
 */
VALUE
rb_fiber_scheduler_io_splice(VALUE scheduler, VALUE from, rb_off_t from_offset, VALUE to, rb_off_t to_offset, size_t length)
{
    struct io_splice_call call = {
        scheduler,
        {
            from, from_offset < 0 ? Qnil : OFFT2NUM(from_offset),
            to, to_offset < 0 ? Qnil : OFFT2NUM(to_offset),
            SIZET2NUM(length),
        },
    };

    if (!rb_fiber_scheduler_interruptible_p(scheduler)) {
        return io_splice_call((VALUE)&call);
    }
    return io_user_call(from, io_splice_call_to, (VALUE)&call);
}

/*
 *  Document-method: Fiber::Scheduler#socket_recv
 *  call-seq: socket_recv(socket, buffer, flags, from = nil) -> received length or -errno
 *
 *  Invoked by BasicSocket#recv and the #recvfrom methods of Socket,
 *  IPSocket and UNIXSocket in a non-blocking fiber, to receive from
 *  +socket+ as recv(2) or recvfrom(2) would.
 *
 *  * +buffer+: a writable IO::Buffer spanning exactly the bytes to
 *    receive into (the caller's length).
 *  * +flags+: the MSG_* flags of recv(2), an Integer.
 *  * +from+: +nil+ if the caller needs no address; otherwise an empty
 *    binary String that the hook replaces with the sender's packed address
 *    (a <tt>struct sockaddr</tt>, as Socket.sockaddr_in makes), or leaves
 *    empty where recvfrom(2) reports none (a connected stream socket).
 *
 *  One call is one transfer: it waits, suspending the fiber, until the
 *  socket has something to receive, and receives at most the buffer's size
 *  (one datagram from a datagram socket).  Returns the number of bytes
 *  received, 0 at end of stream (or an empty datagram), or a negated errno.
 *  -EAGAIN makes the caller wait with #io_wait and call the hook again, so
 *  a hook may simply try once without waiting.  A hook that waits itself
 *  honours IO#timeout of +socket+ (raising IO::TimeoutError), as #io_wait
 *  does through its +timeout+ argument.
 *
 *  Like the other I/O hooks, it is registered as a user of the descriptor
 *  when the scheduler implements #fiber_interrupt, so IO#close interrupts
 *  it.  If the scheduler does not implement the hook, the caller uses
 *  recvfrom(2) and #io_wait.  The non-blocking forms (#recv_nonblock,
 *  #recvfrom_nonblock) and #recvmsg never call it.
 *
 *  A hook whose fiber is interrupted (Fiber#raise, #timeout_after, IO#close)
 *  after the transfer completed should offer the exception to
 *  rb_fiber_scheduler_transfer_interrupted() and, if it is taken, return
 *  the count: a caller that keeps what it receives (a TLS transport, say,
 *  through rb_fiber_scheduler_transfer_call()) raises the exception once
 *  the bytes are kept.  The same holds for #socket_send.
 */
VALUE
rb_fiber_scheduler_socket_recv(VALUE scheduler, VALUE socket, VALUE buffer, int flags, VALUE from)
{
    VALUE args[] = {socket, buffer, INT2NUM(flags), from};

    return rb_fiber_scheduler_io_hook(scheduler, socket, id_socket_recv, 4, args, 0);
}

/*
 *  Document-method: Fiber::Scheduler#socket_send
 *  call-seq: socket_send(socket, buffer, flags, destination = nil) -> sent length or -errno
 *
 *  Invoked by BasicSocket#send (and so Socket#send and UDPSocket#send) in
 *  a non-blocking fiber, to send on +socket+ as send(2) or sendto(2) would.
 *
 *  * +buffer+: a read-only IO::Buffer spanning exactly the bytes to send.
 *  * +flags+: the MSG_* flags of send(2), an Integer.
 *  * +destination+: +nil+, or the packed address to send to (a frozen
 *    binary String).
 *
 *  One call is one transfer: it waits, suspending the fiber, until the
 *  socket can take some of the bytes, and returns how many it took (a
 *  stream socket may take fewer than the buffer holds, as send(2) may), or
 *  a negated errno; -EAGAIN makes the caller wait with #io_wait and call
 *  again.  IO#timeout, IO#close and a missing hook as for #socket_recv.
 *  #sendmsg and #sendmsg_nonblock never call it.
 */
VALUE
rb_fiber_scheduler_socket_send(VALUE scheduler, VALUE socket, VALUE buffer, int flags, VALUE destination)
{
    VALUE args[] = {socket, buffer, INT2NUM(flags), destination};

    return rb_fiber_scheduler_io_hook(scheduler, socket, id_socket_send, 4, args, 0);
}

struct socket_memory_call {
    VALUE scheduler, socket, buffer, address;
    int flags, send;
};

static VALUE
socket_memory_call(VALUE ptr)
{
    struct socket_memory_call *call = (struct socket_memory_call *)ptr;

    if (call->send) {
        return rb_fiber_scheduler_socket_send(call->scheduler, call->socket, call->buffer, call->flags, call->address);
    }
    return rb_fiber_scheduler_socket_recv(call->scheduler, call->socket, call->buffer, call->flags, call->address);
}

/* The caller's memory is only borrowed: whatever the hook kept of the
 * buffer (a slice, a reference) must not reach it afterwards. */
static VALUE
socket_memory_release(VALUE buffer)
{
    rb_io_buffer_free_locked(buffer);
    return Qnil;
}

static VALUE
socket_memory(struct socket_memory_call *call, void *base, size_t size, enum rb_io_buffer_flags flags)
{
    call->buffer = rb_io_buffer_new(base, size, RB_IO_BUFFER_LOCKED | flags);
    return rb_ensure(socket_memory_call, (VALUE)call, socket_memory_release, call->buffer);
}

VALUE
rb_fiber_scheduler_socket_recv_memory(VALUE scheduler, VALUE socket, void *base, size_t size, int flags, VALUE from)
{
    struct socket_memory_call call = {scheduler, socket, Qnil, from, flags, 0};

    return socket_memory(&call, base, size, 0);
}

VALUE
rb_fiber_scheduler_socket_send_memory(VALUE scheduler, VALUE socket, const void *base, size_t size, int flags, VALUE destination)
{
    struct socket_memory_call call = {scheduler, socket, Qnil, destination, flags, 1};

    return socket_memory(&call, (void *)base, size, RB_IO_BUFFER_READONLY);
}

/*
 *  Document-method: Fiber::Scheduler#socket_connect
 *  call-seq: socket_connect(socket, address) -> 0 or -errno
 *
 *  Invoked by Socket#connect, TCPSocket.new, UNIXSocket.new and
 *  UDPSocket#connect in a non-blocking fiber, to connect +socket+ to the
 *  packed +address+ as connect(2) would, waiting (suspending the fiber)
 *  until the connection is made or fails.  Returns 0, or a negated errno
 *  (-ECONNREFUSED, ...).  -EINPROGRESS makes the caller wait with
 *  #io_wait for the connection to finish, as after connect(2) on a
 *  non-blocking socket.  Not invoked for an explicit +connect_timeout+
 *  (the caller waits with #io_wait and that timeout) or through SOCKS.
 *  IO#timeout, IO#close and a missing hook as for #socket_recv.
 */
VALUE
rb_fiber_scheduler_socket_connect(VALUE scheduler, VALUE socket, VALUE address)
{
    VALUE args[] = {socket, address};

    return rb_fiber_scheduler_io_hook(scheduler, socket, id_socket_connect, 2, args, 0);
}

/*
 *  Document-method: Fiber::Scheduler#socket_accept
 *  call-seq: socket_accept(socket, address) -> descriptor or -errno
 *
 *  Invoked by Socket#accept, Socket#sysaccept, TCPServer#accept,
 *  TCPServer#sysaccept, UNIXServer#accept and UNIXServer#sysaccept in a
 *  non-blocking fiber, to accept a connection on the listening +socket+ as
 *  accept4(2) would, waiting (suspending the fiber) until one comes.
 *  +address+ is an empty binary String that the hook replaces with the
 *  peer's packed address.
 *
 *  Returns the new descriptor, an Integer, which must be close-on-exec and
 *  non-blocking (accept4(2)'s SOCK_CLOEXEC and SOCK_NONBLOCK): the caller
 *  owns it from then on.  Or returns a negated errno; -EAGAIN makes the
 *  caller wait with #io_wait and call again.  IO#timeout, IO#close and a
 *  missing hook as for #socket_recv.
 */
VALUE
rb_fiber_scheduler_socket_accept(VALUE scheduler, VALUE socket, VALUE address)
{
    VALUE args[] = {socket, address};

    return rb_fiber_scheduler_io_hook(scheduler, socket, id_socket_accept, 2, args, 0);
}

/*
 *  Document-method: Fiber::Scheduler#socket_shutdown
 *  call-seq: socket_shutdown(socket, how) -> 0 or -errno
 *
 *  Invoked by BasicSocket#shutdown in a non-blocking fiber, to shut down
 *  part of +socket+'s connection as shutdown(2) would; +how+ is
 *  Socket::SHUT_RD, SHUT_WR or SHUT_RDWR.  Returns 0 or a negated errno.
 *  shutdown(2) does not wait: the hook lets a scheduler order it after
 *  the sends it has queued on the socket.
 */
VALUE
rb_fiber_scheduler_socket_shutdown(VALUE scheduler, VALUE socket, int how)
{
    VALUE args[] = {socket, INT2NUM(how)};

    return rb_fiber_scheduler_io_hook(scheduler, socket, id_socket_shutdown, 2, args, 0);
}

/*
 *  Document-method: Fiber::Scheduler#io_buffer_register
 *  call-seq: io_buffer_register(buffer) -> true or false
 *
 *  Registers the memory of the IO::Buffer +buffer+ with the kernel for the
 *  scheduler's operations (io_uring's fixed buffers), so that reads and
 *  writes into it, or into any slice of it (IO::Buffer#read, #write,
 *  #pread, #pwrite and the scheduler's #io_read, #io_write, #io_pread and
 *  #io_pwrite), skip pinning and mapping its pages on every operation.
 *  The kernel does that work for direct I/O (files opened with O_DIRECT)
 *  and zero-copy sends; other transfers copy the bytes, and gain little.
 *  Not called by Ruby itself: applications and libraries call it for the
 *  buffers they keep, typically one large arena handed out in slices.
 *
 *  Eligible buffers own anonymous memory: made by IO::Buffer.new (an
 *  INTERNAL or MAPPED, not SHARED buffer), not a slice, not the memory of
 *  a String or a file (EXTERNAL, FILE), not READONLY, not null, at most
 *  1 GiB.  Others raise ArgumentError; an object that is not an IO::Buffer
 *  raises TypeError.
 *
 *  Returns +true+ once the buffer is registered (also if it was already),
 *  +false+ if the scheduler cannot register it: no support, a full
 *  registration table, pinned memory beyond RLIMIT_MEMLOCK (ENOMEM), or
 *  any other refusal of the kernel.  I/O with the buffer works either way;
 *  registration only changes its cost.
 *
 *  While registered, the buffer holds a lock (IO::Buffer#locked? is true;
 *  #free, #resize and #transfer raise IO::Buffer::LockedError: the kernel
 *  keeps the pages) and the scheduler keeps it alive, until
 *  #io_buffer_unregister or the scheduler closes.  A forked child has no
 *  registrations: its copies of the buffers are unlocked there.  Call it
 *  on the scheduler's own thread (an io_uring accepts registrations from
 *  its submitting thread only); from another thread it raises ThreadError.
 */
VALUE
rb_fiber_scheduler_io_buffer_register(VALUE scheduler, VALUE buffer)
{
    return rb_check_funcall(scheduler, id_io_buffer_register, 1, &buffer);
}

/*
 *  Document-method: Fiber::Scheduler#io_buffer_unregister
 *  call-seq: io_buffer_unregister(buffer) -> true or false
 *
 *  Ends the registration of +buffer+ (see #io_buffer_register) and releases
 *  its lock.  Returns +true+ if it was registered, +false+ if not.  An
 *  operation still using the buffer keeps a lock of its own until it ends,
 *  and the kernel keeps the pages until then.
 */
VALUE
rb_fiber_scheduler_io_buffer_unregister(VALUE scheduler, VALUE buffer)
{
    return rb_check_funcall(scheduler, id_io_buffer_unregister, 1, &buffer);
}

/*
 * A scheduler's own operation on `io` (see ruby/fiber/scheduler.h), with
 * the current fiber registered as a user of the descriptor, as the I/O
 * hooks are.
 */
VALUE
rb_fiber_scheduler_io_operation(VALUE io, VALUE (*function)(VALUE), VALUE argument)
{
    return io_user_call(io, function, argument);
}

/*
 * Transfers kept across interrupts (rb_fiber_scheduler_transfer_call):
 * the innermost call of a fiber is a frame on its stack, linked from its
 * execution context (ec->transfer_frame), so it lives and dies with the
 * fiber; a fiber abandoned inside a call leaves nothing behind.
 */
struct rb_fiber_scheduler_transfer_frame {
    struct rb_fiber_scheduler_transfer_frame *prev;
    VALUE exception;
};

struct transfer_call {
    VALUE (*function)(VALUE);
    VALUE argument;
    rb_execution_context_t *ec;
    struct rb_fiber_scheduler_transfer_frame frame;
};

static VALUE
transfer_call_body(VALUE ptr)
{
    struct transfer_call *call = (struct transfer_call *)ptr;

    return call->function(call->argument);
}

static VALUE
transfer_call_leave(VALUE ptr)
{
    struct transfer_call *call = (struct transfer_call *)ptr;

    call->ec->transfer_frame = call->frame.prev;
    return Qnil;
}

/* See ruby/fiber/scheduler.h. */
VALUE
rb_fiber_scheduler_transfer_call(VALUE (*function)(VALUE), VALUE argument, VALUE *exception)
{
    rb_execution_context_t *ec = GET_EC();
    struct transfer_call call = {function, argument, ec, {ec->transfer_frame, Qnil}};
    VALUE result;

    ec->transfer_frame = &call.frame;
    result = rb_ensure(transfer_call_body, (VALUE)&call, transfer_call_leave, (VALUE)&call);
    *exception = call.frame.exception;
    RB_GC_GUARD(call.frame.exception);
    return result;
}

/* See ruby/fiber/scheduler.h. */
int
rb_fiber_scheduler_transfer_interrupted(VALUE exception)
{
    struct rb_fiber_scheduler_transfer_frame *frame = GET_EC()->transfer_frame;

    if (!frame || !NIL_P(frame->exception) || !rb_obj_is_kind_of(exception, rb_eException))
        return 0;
    frame->exception = exception;
    return 1;
}

/*
 * In the child, from rb_thread_atfork(): the thread's scheduler belongs to
 * the parent.  It is set aside, neither closed nor run.
 */
void
rb_fiber_scheduler_atfork(rb_thread_t *th)
{
    inherited_scheduler = th->scheduler;
    th->scheduler = Qnil;
}

/*
 *  Document-method: Fiber::Scheduler#process_fork
 *  call-seq: process_fork -> scheduler or nil
 *
 *  Invoked in the child process of a fork (Kernel#fork, Process.fork,
 *  IO.popen with <tt>"-"</tt>, Process.daemon) on the scheduler that the
 *  forking thread had in the parent, before any code of the child runs.
 *  Never invoked in the parent.
 *
 *  The child is clean already: its thread has no scheduler, the forking
 *  fiber has become the thread's root fiber and is blocking, and no other
 *  fiber of the parent will run.  The scheduler should let go of what it
 *  owned in the parent without using it (kernel objects such as an
 *  io_uring or an epoll instance are shared with the parent), and may
 *  return a new scheduler for the child, which is set as if by
 *  Fiber.set_scheduler: the fibers it schedules run when the fork block
 *  ends or the child exits.  Returning +nil+ (or not implementing the hook)
 *  leaves the child without a scheduler.
 *
 *  An exception raised by the hook is raised in the child by the method
 *  that forked; with a block, before the block runs, and the child exits as
 *  if the block had raised it.
 */
VALUE
rb_fiber_scheduler_process_fork(VALUE scheduler)
{
    return rb_check_funcall(scheduler, id_process_fork, 0, NULL);
}

/*
 * In the child, once ruby is ready to run code: offers the inherited
 * scheduler #process_fork and installs what it returns.
 */
VALUE
rb_fiber_scheduler_fork_child(void)
{
    VALUE scheduler = inherited_scheduler, result;

    if (NIL_P(scheduler)) return Qnil;
    inherited_scheduler = Qnil;
    result = rb_fiber_scheduler_process_fork(scheduler);
    if (UNDEF_P(result) || NIL_P(result)) return Qnil;
    rb_fiber_scheduler_set(result);
    return result;
}

/*
 *  Document-method: Fiber::Scheduler#process_open
 *  call-seq: process_open(handle) -> true or false
 *
 *  Invoked when a non-blocking fiber of this scheduler's thread creates a
 *  Process::Handle (Process::Handle.spawn, .fork in the parent, .open),
 *  once, before the handle is returned.  Optional.
 *
 *  A truthy result adopts the handle.  Waits without a timeout on an
 *  adopted handle from this scheduler's fibers (Process::Handle#wait,
 *  Process.wait(handle), Process::Status.wait(handle)) then call
 *  #process_wait with the handle in place of a pid:
 *
 *    process_wait(handle, flags) -> Process::Status
 *
 *  which should suspend the fiber until the process has exited and return
 *  <tt>handle.wait_nonblock</tt> (which reaps it through its pidfd and
 *  caches the status for every other waiter), or return early and let
 *  core wait for readability of <tt>handle.to_io</tt> with #io_wait.  It
 *  should not raise Errno::ECHILD: core reports it.  A scheduler that
 *  does not adopt a handle never sees one in #process_wait; waits then go
 *  through #io_wait on the pidfd.
 *
 *  Adoption is what lets a scheduler wait for the exit itself (with
 *  IORING_OP_WAITID, say) and know the children its fibers created, to
 *  supervise them or decide what happens to them when it closes.
 *  An exception from the hook propagates to the method that created the
 *  handle.  The child exists either way: the handle nobody received is
 *  detached (the child is reaped when it exits, and its pidfd closed).
 */
VALUE
rb_fiber_scheduler_process_open(VALUE scheduler, VALUE handle)
{
    return rb_check_funcall(scheduler, id_process_open, 1, &handle);
}

/* The hook is registered as a user of the pidfd `io`: IO#close of it
 * interrupts the wait as it interrupts I/O hooks. */
VALUE
rb_fiber_scheduler_process_wait_handle(VALUE scheduler, VALUE handle, VALUE io, int flags)
{
    VALUE args[2] = {handle, INT2NUM(flags)};
    return rb_fiber_scheduler_io_hook(scheduler, io, id_process_wait, 2, args, 0);
}

void
Init_scheduler_hooks(void)
{
    id_fiber_interrupt = rb_intern_const("fiber_interrupt");
    id_process_fork = rb_intern_const("process_fork");
    id_process_open = rb_intern_const("process_open");
    id_process_wait = rb_intern_const("process_wait");
    id_io_splice = rb_intern_const("io_splice");
    id_io_buffer_register = rb_intern_const("io_buffer_register");
    id_io_buffer_unregister = rb_intern_const("io_buffer_unregister");
    id_socket_recv = rb_intern_const("socket_recv");
    id_socket_send = rb_intern_const("socket_send");
    id_socket_connect = rb_intern_const("socket_connect");
    id_socket_accept = rb_intern_const("socket_accept");
    id_socket_shutdown = rb_intern_const("socket_shutdown");
    rb_gc_register_address(&inherited_scheduler);
}
