# frozen_string_literal: true
# IO#close waiting for the users of its descriptor, twice, for test_gdb.rb
# to stop in (gdb: break notify_fd_close_sleep) and inspect: a fiber
# closing a pipe a fiber of its scheduler reads, then a thread closing a
# pipe another thread reads.
require "io/uring"

$stdout.sync = true
fiber_r, _fiber_w = IO.pipe
thread_r, _thread_w = IO.pipe

Thread.new do
  Fiber.set_scheduler(IO::Uring::Scheduler.new)
  Fiber.schedule do
    fiber_r.read(1)                  # gdb:fiber_reader
  rescue IOError
  end
  Fiber.schedule do
    puts "fiber close fd=#{fiber_r.fileno}"
    fiber_r.close                    # gdb:fiber_closer
  end
end.join

reader = Thread.new do
  thread_r.read(1)                   # gdb:thread_reader
rescue IOError
end
Thread.pass until reader.status == "sleep"
puts "thread close fd=#{thread_r.fileno}"
thread_r.close                       # gdb:thread_closer
reader.join
puts "done"
