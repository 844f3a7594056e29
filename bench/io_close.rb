# frozen_string_literal: true
#
# IO#close through Fiber::Scheduler#io_close, side by side.
#
#   ruby bench/io_close.rb [--runs N] [--pairs P] [--fibers F]
#
# P pipe pairs are opened (IO.pipe) and closed (IO#close) by F fibers in
# turn.  Cases: IO::Uring::Scheduler with its #io_close (IORING_OP_CLOSE) and
# without it (the same scheduler, Ruby closing with close(2)); the patched
# ruby and stock 3.4.5 without a scheduler, stock under CRuby's test
# scheduler and under Async (whose close never reaches a scheduler on
# 3.4.5); and bench/c/close_baseline.c, pipe2(2) + close(2) or batched
# IORING_OP_CLOSE in C, the physical limit.
#
# N runs (default 5) interleaved: run 1 of every case, then run 2, ...  A
# markdown table: median seconds and range, the median CPU (user + sys of
# the process during the workload, all threads) per pair and its range,
# and the ratio to the hook-less IO::Uring::Scheduler's median.
#
#   ruby bench/io_close.rb --workload MODE P F    (one measurement:
#                                                  "seconds cpu_seconds")
require "optparse"
require_relative "lib/stats"

def workload(mode, pairs, fibers)
  per_fiber = pairs / fibers
  body = proc do
    per_fiber.times do
      r, w = IO.pipe
      r.close
      w.close
    end
  end
  case mode
  when "none"
    t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    fibers.times { body.call }
    return Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
  when "uring", "uring-nohook"
    require "io/uring"
    make = proc do
      scheduler = IO::Uring::Scheduler.new
      scheduler.singleton_class.undef_method(:io_close) if mode == "uring-nohook"
      scheduler
    end
  when "test-scheduler"
    require ENV.fetch("RUBY_TEST_SCHEDULER")
    make = proc { Scheduler.new }
  when "async"
    require "async"
    t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    Sync { |task| fibers.times.map { task.async(&body) }.each(&:wait) }
    return Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
  else
    abort "unknown mode #{mode}"
  end
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  Thread.new do
    Fiber.set_scheduler(make.call)
    fibers.times { Fiber.schedule(&body) }
  end.join
  Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
end

if ARGV.first == "--workload"
  _, mode, pairs, fibers = ARGV
  c0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
  seconds = workload(mode, Integer(pairs), Integer(fibers))
  puts "#{seconds} #{Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - c0}"
  exit
end

top = File.expand_path("..", __dir__)
opts = { runs: 5, pairs: 100_000, fibers: 100 }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--pairs N", Integer) { |v| opts[:pairs] = v }
  o.on("--fibers N", Integer) { |v| opts[:fibers] = v }
end.parse!

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
baseline = File.join(top, "build/bench/close_baseline")
abort "bench: make and make stock first" unless File.executable?(stock) && File.executable?(patched)
unless File.executable?(baseline) && File.mtime(baseline) > File.mtime(File.join(__dir__, "c/close_baseline.c"))
  Dir.mkdir(File.dirname(baseline)) unless Dir.exist?(File.dirname(baseline))
  system("cc", "-O2", "-o", baseline, File.join(__dir__, "c/close_baseline.c"),
         "-I#{top}/build/liburing/include", "#{top}/build/liburing/lib/liburing.a") or abort "bench: cc failed"
end
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }

CASES = [
  ["IO::Uring, #io_close", [patched, __FILE__, "--workload", "uring"]],
  ["IO::Uring, no #io_close", [patched, __FILE__, "--workload", "uring-nohook"]],
  ["patched, no scheduler", [patched, __FILE__, "--workload", "none"]],
  ["stock, no scheduler", [stock, __FILE__, "--workload", "none"]],
  ["stock, test scheduler", [stock, __FILE__, "--workload", "test-scheduler"]],
  ["stock, Async", [stock, __FILE__, "--workload", "async"]],
  ["C, close(2)", [baseline, "sync"]],
  ["C, IORING_OP_CLOSE", [baseline, "uring"]],
].freeze
BASELINE = "IO::Uring, no #io_close"

Run = Struct.new(:seconds, :cpu, :error)

results = BenchStats.interleave(opts[:runs], CASES.map(&:first)) do |name|
  args = [*CASES.assoc(name)[1], opts[:pairs], opts[:fibers]].map(&:to_s)
  out = IO.popen(env, args, err: File::NULL, &:read)
  next Run.new(nil, nil, "exited with #{$?.inspect}") unless $?.success?
  seconds, cpu = out.lines.last.split.map { |v| Float(v) }
  Run.new(seconds, cpu, nil)
rescue ArgumentError, TypeError, NoMethodError => e
  Run.new(nil, nil, e.message)
end

base = BenchStats.median_of(results[BASELINE], :seconds)
puts format("### IO.pipe + 2 x IO#close, %d pairs in %d fibers, %d run(s) interleaved",
            opts[:pairs], opts[:fibers], opts[:runs])
puts
puts "| case | s median | s range | CPU µs/pair median | CPU µs/pair range | pairs/s | vs #{BASELINE} |"
puts "|---|---:|---:|---:|---:|---:|---:|"
cpu_per_pair = ->(r) { r.cpu * 1e6 / opts[:pairs] }
pairs_per_second = ->(ok) { format("%.0f", opts[:pairs] / BenchStats.median_of(ok, :seconds)) }
CASES.each do |name, _|
  puts BenchStats.row(name, results[name], [:seconds, cpu_per_pair], format: %w[%.3f %.2f],
                      base: base, faster: :lower, extra: pairs_per_second)
end
puts
puts "(ratio: #{BASELINE}'s median seconds over the case's, higher is faster)"
BenchStats.print_failures(results, CASES.map(&:first))
