# frozen_string_literal: true
#
# Ping-pong between pairs of fibers (or threads), UringMachine's published
# workload: GROUPS pairs, each exchanging ITERATIONS messages of SIZE bytes
# each way over a pipe pair or a UNIX socketpair.
#
#   ruby bench/pingpong.rb MODE TRANSPORT [GROUPS ITERATIONS SIZE]
#
#   MODE       threads | test-scheduler | async-epoll | async-uring | uring
#   TRANSPORT  pipe | socketpair
#
# Prints the elapsed wall-clock seconds of the exchange on stdout.
require "socket"

mode, transport = ARGV.shift(2)
groups = Integer(ARGV.shift || 50)
iterations = Integer(ARGV.shift || 5000)
size = Integer(ARGV.shift || 1024)
MESSAGE = ("x" * size).freeze

def channel(transport)
  case transport
  when "pipe"
    a_r, b_w = IO.pipe
    b_r, a_w = IO.pipe
    [[a_r, a_w], [b_r, b_w]]
  when "socketpair"
    a, b = UNIXSocket.pair
    [[a, a], [b, b]]
  else
    abort "unknown transport #{transport}"
  end
end

def ping((r, w), iterations, size)
  buffer = String.new(capacity: size)
  iterations.times do
    w.write(MESSAGE)
    r.read(size, buffer)
  end
end

def pong((r, w), iterations, size)
  buffer = String.new(capacity: size)
  iterations.times do
    r.read(size, buffer)
    w.write(buffer)
  end
end

pairs = groups.times.map { channel(transport) }
workers = pairs.flat_map do |a, b|
  [proc { ping(a, iterations, size) }, proc { pong(b, iterations, size) }]
end

def run_fibers(workers)
  workers.each { |work| Fiber.schedule(&work) }
end

start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
case mode
when "threads"
  workers.map { |work| Thread.new(&work) }.each(&:join)
when "test-scheduler"
  # CRuby's own test scheduler (IO.select based), from the ruby source tree.
  require File.expand_path(ENV.fetch("RUBY_TEST_SCHEDULER"))
  Thread.new do
    Fiber.set_scheduler(Scheduler.new)
    run_fibers(workers)
  end.join
when "async-epoll", "async-uring"
  require "async"
  selector = mode == "async-epoll" ? IO::Event::Selector::EPoll : IO::Event::Selector::URing
  Thread.new do
    Fiber.set_scheduler(Async::Scheduler.new(selector: selector.new(Fiber.current)))
    run_fibers(workers)
  end.join
when "uring"
  require "io/uring"
  Thread.new do
    Fiber.set_scheduler(IO::Uring::Scheduler.new)
    run_fibers(workers)
  end.join
else
  abort "unknown mode #{mode}"
end
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - start
pairs.flatten.uniq.each(&:close)
puts format("%.4f", elapsed)
