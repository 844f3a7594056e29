# frozen_string_literal: true
# Fibers and threads parked in known operations, for test_gdb.rb to inspect
# with gdb.  Each place it parks is marked with a "gdb:" comment, which the
# test turns into a line number.  Prints one "ready" line of descriptors,
# then waits to be killed.
require "io/uring"
require "socket"
require "timeout"

$stdout.sync = true
s = IO::Uring::Scheduler.new
reader_r, reader_w = IO.pipe           # a pipe read
src_r, src_w = IO.pipe                 # splice source (empty: the splice waits)
dst_r, dst_w = IO.pipe                 # splice destination
fixed_r, fixed_w = IO.pipe             # a read into a registered buffer
timed_r, timed_w = IO.pipe             # a read with IO#timeout
timeout_r, timeout_w = IO.pipe         # a read under Timeout.timeout
pooled_a, pooled_b = UNIXSocket.pair   # read_pooled
handle = Process::Handle.spawn("sleep", "600")
queue = Thread::Queue.new
timed_r.timeout = 600

def read_one(io)
  io.read(1)                           # gdb:read
end

def nap
  sleep 600                            # gdb:sleep
end

blocking = Thread.new do
  Thread.current.name = "blocking-reader"
  ra, _wa = IO.pipe
  $blocking_fd = ra.fileno
  ra.read(1)                           # gdb:blocking
end

ready = Thread::Queue.new
uring = Thread.new do
  Thread.current.name = "uring"
  Fiber.set_scheduler(s)
  buffer = IO::Buffer.new(4096)
  s.io_buffer_register(buffer)
  s.read_pool(8, 4096)
  Fiber.schedule { read_one(reader_r) }
  Fiber.schedule { nap }
  Fiber.schedule { IO.copy_stream(src_r, dst_w, 100) }                 # gdb:splice
  Fiber.schedule { handle.wait }                                       # gdb:handle
  Fiber.schedule { queue.pop }                                         # gdb:pop
  Fiber.schedule { buffer.read(fixed_r, 1) }                           # gdb:fixed
  Fiber.schedule { timed_r.read(1) }                                   # gdb:timed
  Fiber.schedule { Timeout.timeout(600) { timeout_r.read(1) } }        # gdb:timeout
  Fiber.schedule { s.read_pooled(pooled_a) }                           # gdb:pooled
  ready << true
end

ready.pop
# parked: the blocking read, and the scheduler's loop in io_uring_enter(2)
# with every operation submitted
Thread.pass until blocking.status == "sleep" && uring.status == "sleep"
puts "ready pid=#{Process.pid} read=#{reader_r.fileno} splice_src=#{src_r.fileno} " \
     "splice_dst=#{dst_w.fileno} pidfd=#{handle.to_io.fileno} child=#{handle.pid} " \
     "fixed=#{fixed_r.fileno} timed=#{timed_r.fileno} timeout=#{timeout_r.fileno} " \
     "pooled=#{pooled_a.fileno} blocking=#{$blocking_fd}"
sleep                                  # gdb:main
