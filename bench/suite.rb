# frozen_string_literal: true
#
# UringMachine's benchmark suite (benchmark/bm_*.rb in
# digital-fabric/uringmachine), its workloads and parameters, run side by
# side on CRuby's Fiber::Scheduler implementations.
#
#   ruby bench/suite.rb [--runs N] [--scale F] [--only REGEX]
#                       [--workloads pipe,socketpair,...] [--um-ruby PATH]
#
# Workloads (UM's parameters at --scale 1):
#   pipe        48 pairs of fibers: 10,000 writes of 1 KiB into a pipe, and
#               10,000 readpartial(1024) at the other end
#   socketpair  50 pairs: 10,000 BasicSocket#send of 1 KiB over a UNIX
#               socketpair, 10,000 #recv(1024)
#   mutex_io    50 groups of 10 fibers sharing a Mutex, 1,000 times each
#               writing 1 KiB to the group's file (sync = true) under it;
#               the files in /tmp, as UM's
#   mutex_null  the same writes to /dev/null (UM's earlier mutex_io)
#   queue       40 Queues, each with 5 producers pushing 200,000 items and
#               10 consumers
#   handoff     50 pairs of fibers passing a value back and forth through
#               two Queues, 10,000 times: every pop waits (Fiber::Scheduler
#               #block) and every push wakes the other fiber (#unblock), so
#               this is the cost of a block/unblock hand-off (not a UM
#               benchmark)
#   mutex_cpu   20 groups of 10 fibers, 10,000 regexp matches each under
#               the group's Mutex
#   http        an HTTP-server-like loop over TCP on 127.0.0.1: an acceptor
#               fiber (TCPServer#accept: the socket_accept hook on the
#               patched ruby) and a fiber per connection, reading requests
#               with readpartial(4096) and writing a 1 KiB response (io_read,
#               io_write); 50 client fibers, each making 20 connections
#               (TCPSocket.new: socket_connect) of 10 keep-alive requests:
#               1,000 connections, 10,000 requests (not a UM benchmark)
#
# Contenders: CRuby's test scheduler (IO.select), Async + io-event (EPoll
# and URing selectors) and threads on stock 3.4.5; IO::Uring::Scheduler on
# the patched ruby.  UringMachine's own scheduler and API need Ruby 4.0 and
# the uringmachine gem: --um-ruby PATH runs the `um-fs` contender
# (UM::FiberScheduler) with that ruby; without it they are left out, and
# the table says so.
#
# N runs (default 5) interleaved: run 1 of every workload and contender,
# then run 2, ...  Per workload, a markdown table: the median seconds of
# the workload (timed inside the child, start-up excluded) and their range,
# the median CPU seconds of the child (user + sys, all threads: io_uring
# workers included, start-up excluded), and the ratio of the test
# scheduler's median to the contender's (higher is faster).  --scale
# multiplies the iteration counts (0.1 for a quick look).  Every run goes
# to bench/results/suite.csv.
#
#   ruby bench/suite.rb --workload NAME MODE SCALE   (one run, in a child:
#                                                    prints "seconds cpu")
require "socket"

def cpu_now
  Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
end

def scaled(n, scale)
  [(n * scale).round, 1].max
end

# 50 groups of 10 fibers sharing a Mutex, each writing 1 KiB 1,000 times
# (scaled) under it to the group's file, which the block opens (group
# number => [file, path to delete or nil]).
def mutex_writes(spawn, scale)
  data = ("*" * 1024).freeze
  n = scaled(1_000, scale)
  50.times.map do |i|
    mutex = Mutex.new
    file, path = yield(i)
    file.sync = true
    10.times { spawn.call { n.times { mutex.synchronize { file.write(data) } } } }
    [file, path]
  end
end

# What the http workload must have done, checked when the child cleans up
# (after the timing): a client fiber's exception need not reach the child
# (Async logs it), so the counts are what proves the work was done.
class HttpCheck
  attr_accessor :accepted, :failed
  attr_reader :responses

  def initialize(clients, expected)
    @clients = clients
    @expected = expected
    @accepted = 0
    @failed = false
    @responses = Array.new(clients, 0) # one slot per client: no race in threads
    @finished = 0
    @lock = Mutex.new
  end

  # A client is done; true for the last one.
  def finish
    @lock.synchronize { (@finished += 1) == @clients }
  end

  def close
    got = @responses.sum
    raise "http: #{got} responses of #{@expected}, #{@accepted} connections accepted" unless got == @expected
  end
end

# Each workload: a lambda that starts its fibers (or threads, given a
# spawn proc) and returns something to clean up afterwards: [object, path
# to delete or nil] pairs, each object closed after the timing.
WORKLOADS = {
  "pipe" => lambda do |spawn, scale|
    data = ("*" * 1024).freeze
    n = scaled(10_000, scale)
    48.times.flat_map do
      r, w = IO.pipe
      r.sync = w.sync = true
      spawn.call { n.times { w.write(data) }; w.close }
      spawn.call { buffer = String.new(capacity: 1024); n.times { r.readpartial(1024, buffer) }; r.close }
      []
    end
  end,
  "socketpair" => lambda do |spawn, scale|
    data = ("*" * 1024).freeze
    n = scaled(10_000, scale)
    50.times.flat_map do
      r, w = Socket.socketpair(:AF_UNIX, :SOCK_STREAM, 0)
      spawn.call { n.times { w.send(data, 0) }; w.close }
      spawn.call { n.times { r.recv(1024) }; r.close }
      []
    end
  end,
  "mutex_io" => lambda do |spawn, scale|
    mutex_writes(spawn, scale) do |i|
      path = "/tmp/bench_suite_mutex_io_#{$$}_#{i}"
      [File.open(path, "w"), path]
    end
  end,
  "mutex_null" => lambda do |spawn, scale|
    mutex_writes(spawn, scale) { [File.open(File::NULL, "w"), nil] }
  end,
  "queue" => lambda do |spawn, scale|
    n = scaled(200_000, scale)
    40.times.flat_map do
      queue = Queue.new
      5.times { spawn.call { n.times { queue << rand(1000) }; 10.times { queue << :stop } } }
      10.times do
        spawn.call do
          loop do
            item = queue.shift
            break if item == :stop
            item * rand(1000)
          end
        end
      end
      []
    end
  end,
  "http" => lambda do |spawn, scale|
    clients = 50
    per_client = scaled(20, scale)
    total = clients * per_client
    body = ("*" * 1024).freeze
    response = "HTTP/1.1 200 OK\r\nContent-Length: #{body.bytesize}\r\n\r\n#{body}".freeze
    request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    server = TCPServer.new("127.0.0.1", 0)
    server.listen(1024)
    port = server.local_address.ip_port
    check = HttpCheck.new(clients, total * 10)
    serve = lambda do |conn| # a variable of its own per connection
      spawn.call do
        buffer = String.new
        loop do
          buffer << conn.readpartial(4096) until (i = buffer.index("\r\n\r\n"))
          buffer = buffer.byteslice(i + 4..)
          conn.write(response)
        end
      rescue EOFError
      ensure
        conn.close
      end
    end
    # The acceptor takes the expected number of connections and closes the
    # server: no fiber is left in #accept, and no server is closed under
    # one (which not every scheduler wakes up).
    spawn.call do
      while check.accepted < total
        conn = server.accept
        break conn.close if check.failed # woken up by the last client
        check.accepted += 1
        serve.call(conn)
      end
    ensure
      server.close
    end
    clients.times do |c|
      spawn.call do
        per_client.times do
          TCPSocket.open("127.0.0.1", port) do |sock|
            buffer = String.new
            10.times do
              sock.write(request)
              buffer << sock.readpartial(4096) until (i = buffer.index("\r\n\r\n"))
              length = buffer[/\r\ncontent-length: *(\d+)\r\n/i, 1].to_i
              buffer << sock.readpartial(4096) while buffer.bytesize < i + 4 + length
              unless buffer.start_with?("HTTP/1.1 200 OK\r\n") && length == body.bytesize &&
                     buffer.bytesize == i + 4 + length && buffer.byteslice(i + 4, length) == body
                raise "http: bad response (#{buffer.bytesize} bytes): #{buffer[0, 60].inspect}"
              end
              buffer.clear
              check.responses[c] += 1
            end
          end
        end
      rescue
        check.failed = true
        raise
      ensure
        # After a failure the acceptor waits for connections that will not
        # come: the last client wakes it up with one more.
        if check.finish && check.failed
          begin
            TCPSocket.open("127.0.0.1", port, &:close)
          rescue SystemCallError # it has closed the server already
          end
        end
      end
    end
    [[check, nil]]
  end,
  "handoff" => lambda do |spawn, scale|
    n = scaled(10_000, scale)
    50.times.flat_map do
      ping = Queue.new
      pong = Queue.new
      spawn.call { n.times { |i| ping << i; pong.pop } }
      spawn.call { n.times { pong << ping.pop } }
      []
    end
  end,
  "mutex_cpu" => lambda do |spawn, scale|
    n = scaled(10_000, scale)
    str = "foobar" * 100
    re = /foo(.+)$/
    20.times.flat_map do
      mutex = Mutex.new
      10.times { spawn.call { n.times { mutex.synchronize { str.match(re) } } } }
      []
    end
  end,
}.freeze

def run_workload(name, mode, scale)
  work = WORKLOADS.fetch(name)
  cleanup = nil
  if mode == "threads"
    threads = []
    cleanup = work.call(->(&b) { threads << Thread.new(&b) }, scale)
    threads.each(&:join)
    return cleanup
  end
  make = case mode
         when "test-scheduler"
           require File.expand_path(ENV.fetch("RUBY_TEST_SCHEDULER"))
           -> { Scheduler.new }
         when "async-epoll", "async-uring"
           require "async"
           require "io/event"
           selector = mode == "async-epoll" ? IO::Event::Selector::EPoll : IO::Event::Selector::URing
           -> { Async::Scheduler.new(selector: selector.new(Fiber.current)) }
         when "uring"
           require "io/uring"
           -> { IO::Uring::Scheduler.new }
         when "um-fs"
           require "uringmachine"
           require "uringmachine/fiber_scheduler"
           -> { UM::FiberScheduler.new(UM.new) }
         else
           abort "unknown mode #{mode}"
         end
  spawn = ->(&b) { Fiber.schedule(&b) }
  if mode == "test-scheduler"
    # Its #fiber hook transfers to the new fiber, and a fiber that blocks
    # transfers to the scheduler, never back to the one that spawned it: a
    # scheduled fiber spawning another (http's acceptor) goes on the ready
    # list first, or it would never run again.
    spawn = lambda do |&b|
      Fiber.scheduler.unblock(nil, Fiber.current) unless Fiber.current.blocking?
      Fiber.schedule(&b)
    end
  end
  Thread.new do
    scheduler = make.call
    Fiber.set_scheduler(scheduler)
    cleanup = work.call(spawn, scale)
    scheduler.join if scheduler.respond_to?(:join) && mode == "um-fs"
  end.join
  cleanup
end

if ARGV.first == "--workload"
  _, name, mode, scale = ARGV
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  c0 = cpu_now
  cleanup = run_workload(name, mode, Float(scale))
  puts "#{Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0} #{cpu_now - c0}"
  cleanup&.each do |file, path|
    file.close
    File.delete(path) if path
  end
  exit
end

require "optparse"
require_relative "lib/stats"

top = File.expand_path("..", __dir__)
opts = { runs: 5, scale: 1.0, only: nil, workloads: WORKLOADS.keys, um_ruby: nil }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--scale F", Float) { |v| opts[:scale] = v }
  o.on("--only REGEX", "contenders whose name matches") { |v| opts[:only] = Regexp.new(v, Regexp::IGNORECASE) }
  o.on("--workloads LIST", Array) { |v| opts[:workloads] = v }
  o.on("--um-ruby PATH", "a Ruby >= 4.0 with the uringmachine gem") { |v| opts[:um_ruby] = v }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1
bad = opts[:workloads] - WORKLOADS.keys
abort "bench: unknown workload #{bad.join(", ")} (#{WORKLOADS.keys.join(", ")})" unless bad.empty?

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
abort "bench: make and make stock first (bench/setup.sh for Async)" unless File.executable?(stock) && File.executable?(patched)
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }

BASELINE = "CRuby test scheduler"
contenders = [
  [BASELINE, stock, "test-scheduler"],
  ["Async + io-event EPoll", stock, "async-epoll"],
  ["Async + io-event URing", stock, "async-uring"],
  ["Threads", stock, "threads"],
  ["IO::Uring::Scheduler", patched, "uring"],
]
contenders << ["UM::FiberScheduler", opts[:um_ruby], "um-fs"] if opts[:um_ruby]
contenders.select! { |name, _, _| name.match?(opts[:only]) } if opts[:only]
abort "bench: --only matches no contender" if contenders.empty?

Run = Struct.new(:seconds, :cpu, :error)

def measure(env, ruby, mode, workload, scale)
  out = nil
  IO.popen(env, [ruby, __FILE__, "--workload", workload, mode, scale.to_s], err: [:child, :out]) do |io|
    out = io.read
  end
  status = $?
  unless status.success?
    return Run.new(nil, nil, out.lines.last(6).join.strip.then { |t| t.empty? ? status.to_s : t })
  end
  seconds, cpu = out.lines.last.split.map { |v| Float(v) }
  Run.new(seconds, cpu, nil)
rescue ArgumentError, TypeError, NoMethodError, SystemCallError => e
  Run.new(nil, nil, "#{e.class}: #{e.message}")
end

keys = opts[:workloads].product(contenders.map(&:first))
rubies = contenders.to_h { |name, ruby, mode| [name, [ruby, mode]] }
results = BenchStats.interleave(opts[:runs], keys) do |workload, name|
  ruby, mode = rubies[name]
  measure(env, ruby, mode, workload, opts[:scale])
end

opts[:workloads].each do |workload|
  base = BenchStats.median_of(results[[workload, BASELINE]], :seconds)
  puts format("### %s (scale %g), %d run(s) interleaved", workload, opts[:scale], opts[:runs])
  puts
  puts "| contender | s median | s range | CPU s median | CPU s range | vs #{BASELINE} |"
  puts "|---|---:|---:|---:|---:|---:|"
  contenders.each do |name, _, _|
    puts BenchStats.row(name, results[[workload, name]], %i[seconds cpu], format: "%.3f", base: base, faster: :lower)
  end
  puts "| UM::FiberScheduler, UM's API | not run: needs Ruby >= 4.0 (--um-ruby PATH) | | | | |" unless opts[:um_ruby]
  puts
  BenchStats.print_failures(results, contenders.map { |n, _, _| [workload, n] })
end
puts "(seconds: the workload inside the child, start-up excluded; CPU: user + sys of the child " \
     "over the same span, all threads; ratio: #{BASELINE}'s median seconds over the contender's, " \
     "higher is faster)"

csv = BenchStats.write_csv("suite.csv", "workload,contender,run,seconds,cpu_seconds", keys, results) do |r|
  [r.seconds&.round(4), r.cpu&.round(4)]
end
puts "runs: #{csv}"
