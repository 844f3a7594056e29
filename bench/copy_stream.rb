# frozen_string_literal: true
#
# IO.copy_stream between a file and a TCP socket on 127.0.0.1, both ways,
# side by side: file -> socket, where stock ruby already uses sendfile(2)
# (the splice path must not make it slower), and socket -> file.
#
#   ruby bench/copy_stream.rb [--runs N] [--megabytes M] [--target-dir DIR]
#
# The other end is C (bench/c/proxy_tools.c): a consumer that times from
# the first byte to EOF, or a producer.  Ruby cases: stock 3.4.5 and the
# patched ruby without a scheduler, under CRuby's test scheduler and Async
# + io-event (stock), and under IO::Uring::Scheduler (patched, #io_splice).
# C baselines: sendfile(2), and splice(2) into the file.  The file is
# opened (and truncated) before the clock starts, for every contender, and
# lives in /dev/shm (--target-dir DIR): on a disk the kernel's writeback
# throttling of the previous run's gigabyte decides the figures (runs of
# one contender varied 5x there).
#
# N runs (default 5) interleaved: run 1 of every contender, then run 2, ...
# Per direction, a markdown table: median MB/s (MB = 10^6 bytes) and its
# range, the median CPU ms per GB (10^9 bytes) the copying process spent
# during the copy (all its threads, io_uring workers included) and its
# range, and the ratio to the C baseline's median.  Every run goes to
# bench/results/copy_stream.csv.
#
#   ruby bench/copy_stream.rb --copy DIRECTION MODE FILE [PORT]   (one copy)
require "socket"

def in_mode(mode, &copy)
  case mode
  when "none" then copy.call
  when "uring", "test-scheduler", "async-epoll", "async-uring"
    make = case mode
           when "uring" then require "io/uring"; proc { IO::Uring::Scheduler.new }
           when "test-scheduler" then require ENV.fetch("RUBY_TEST_SCHEDULER"); proc { Scheduler.new }
           else
             require "async"
             require "io/event"
             selector = mode == "async-epoll" ? IO::Event::Selector::EPoll : IO::Event::Selector::URing
             proc { Async::Scheduler.new(selector: selector.new(Fiber.current)) }
           end
    Thread.new do
      Fiber.set_scheduler(make.call)
      Fiber.schedule(&copy)
    end.join
  else
    abort "unknown mode #{mode}"
  end
end

def cpu_now
  Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
end

if ARGV.first == "--copy"
  _, direction, mode, path, port = ARGV
  if direction == "to-socket"
    File.open(path, "rb") do |file|
      socket = TCPSocket.new("127.0.0.1", Integer(port))
      c0 = cpu_now
      in_mode(mode) { IO.copy_stream(file, socket) }
      socket.close
      puts cpu_now - c0
    end
  else
    server = TCPServer.new("127.0.0.1", 0)
    puts server.addr[1]
    $stdout.flush
    File.open(path, "wb") do |file|
      socket = server.accept
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      c0 = cpu_now
      bytes = nil
      in_mode(mode) { bytes = IO.copy_stream(socket, file) }
      puts "#{bytes} #{Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0} #{cpu_now - c0}"
      socket.close
    end
  end
  exit
end

require "optparse"
require "fileutils"
require "tmpdir"
require_relative "lib/stats"

top = File.expand_path("..", __dir__)
opts = { runs: 5, megabytes: 1024, target_dir: File.directory?("/dev/shm") ? "/dev/shm" : Dir.tmpdir }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--megabytes N", Integer) { |v| opts[:megabytes] = v }
  o.on("--target-dir DIR") { |v| opts[:target_dir] = v }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
tools = File.join(top, "build/bench/proxy_tools")
abort "bench: make and make stock first" unless File.executable?(stock) && File.executable?(patched)
unless File.executable?(tools) && File.mtime(tools) > File.mtime(File.join(__dir__, "c/proxy_tools.c"))
  FileUtils.mkdir_p(File.dirname(tools))
  system("cc", "-O2", "-DHAVE_LIBURING", "-I#{top}/build/liburing/include", "-o", tools,
         File.join(__dir__, "c/proxy_tools.c"), "#{top}/build/liburing/lib/liburing.a", "-lpthread") or abort "bench: cc failed"
end
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }
bytes = opts[:megabytes] * 1024 * 1024
dir = File.join(top, "build/bench")
source = File.join(dir, "copy_stream.src")
target = File.join(opts[:target_dir], "copy_stream.#{$$}.dst")
at_exit { File.delete(target) if File.exist?(target) }
unless File.size?(source) == bytes
  File.open(source, "wb") { |f| (bytes / (1 << 20)).times { f.write(Random.bytes(1 << 20)) } }
end

RUBIES = [
  ["stock, no scheduler", stock, "none"],
  ["stock, test scheduler", stock, "test-scheduler"],
  ["stock, Async EPoll", stock, "async-epoll"],
  ["stock, Async URing", stock, "async-uring"],
  ["patched, no scheduler", patched, "none"],
  ["patched, IO::Uring", patched, "uring"],
].freeze

Run = Struct.new(:mb_s, :cpu_ms_per_gb, :error)

def run_of(bytes, received, seconds, cpu)
  return Run.new(nil, nil, "received #{received.inspect} of #{bytes} bytes") unless received.to_i == bytes
  Run.new(bytes / seconds / 1e6, cpu * 1e3 / (bytes / 1e9), nil)
end

# file -> socket: the C consumer times it, the sender reports its CPU.
def to_socket(env, tools, command, bytes)
  consumer = IO.popen([tools, "consume"])
  port = consumer.gets or return Run.new(nil, nil, "no port from the consumer")
  cpu = IO.popen(env, [*command, port.chomp], err: File::NULL, &:read)
  return Run.new(nil, nil, "the sender failed: #{$?.inspect}") unless $?.success?
  received, seconds = consumer.read.split.map(&:to_f)
  run_of(bytes, received, seconds, Float(cpu))
rescue ArgumentError, SystemCallError => e
  Run.new(nil, nil, e.message)
ensure
  consumer&.close
end

# socket -> file: the receiver times it from the accepted connection.
def from_socket(env, tools, command, bytes, target)
  receiver = IO.popen(env, command, err: File::NULL)
  port = receiver.gets or return Run.new(nil, nil, "no port from the receiver")
  system(tools, "produce", port.chomp, bytes.to_s) or return Run.new(nil, nil, "the producer failed")
  received, seconds, cpu = receiver.read.split.map(&:to_f)
  return Run.new(nil, nil, "#{target}: #{File.size(target)} bytes") unless File.size(target) == bytes
  run_of(bytes, received, seconds, cpu)
rescue ArgumentError, SystemCallError => e
  Run.new(nil, nil, e.message)
ensure
  receiver&.close
end

DIRECTIONS = {
  "file -> TCP socket" => ["C sendfile(2)", lambda do |name|
    command = name.start_with?("C ") ? [tools, "sendfile", source] :
      RUBIES.assoc(name).then { |_, ruby, mode| [ruby, __FILE__, "--copy", "to-socket", mode, source] }
    to_socket(env, tools, command, bytes)
  end],
  "TCP socket -> file" => ["C splice(2)", lambda do |name|
    command = name.start_with?("C ") ? [tools, "receive", target] :
      RUBIES.assoc(name).then { |_, ruby, mode| [ruby, __FILE__, "--copy", "from-socket", mode, target] }
    from_socket(env, tools, command, bytes, target)
  end],
}.freeze

keys = DIRECTIONS.flat_map { |direction, (baseline, _)| [baseline, *RUBIES.map(&:first)].map { |n| [direction, n] } }
results = BenchStats.interleave(opts[:runs], keys) { |direction, name| DIRECTIONS[direction][1].call(name) }

DIRECTIONS.each do |direction, (baseline, _)|
  names = [baseline, *RUBIES.map(&:first)]
  base = BenchStats.median_of(results[[direction, baseline]], :mb_s)
  puts format("### %s: %d MiB, %d run(s) interleaved%s", direction, opts[:megabytes], opts[:runs],
              direction.end_with?("file") ? ", the file in #{opts[:target_dir]}" : "")
  puts
  puts "| contender | MB/s median | MB/s range | CPU ms/GB median | CPU ms/GB range | vs #{baseline} |"
  puts "|---|---:|---:|---:|---:|---:|"
  names.each do |name|
    puts BenchStats.row(name, results[[direction, name]], %i[mb_s cpu_ms_per_gb], base: base)
  end
  puts
  puts "(MB/s: 10^6 bytes a second of the copy, higher is faster; CPU: user + sys of the " \
       "copying process during the copy per 10^9 bytes, lower is cheaper; " \
       "ratio: median MB/s over #{baseline}'s)"
  BenchStats.print_failures(results, names.map { |n| [direction, n] })
  puts
end

csv = BenchStats.write_csv("copy_stream.csv", "direction,contender,run,mb_s,cpu_ms_per_gb", keys, results) do |r|
  [r.mb_s&.round(1), r.cpu_ms_per_gb&.round(1)]
end
puts "runs: #{csv}"
