# frozen_string_literal: true
#
# IO.copy_stream between a file and a TCP socket on 127.0.0.1, both ways,
# side by side: file -> socket, where stock ruby already uses sendfile(2)
# (the splice path must not make it slower), and socket -> file.
#
#   ruby bench/copy_stream.rb [--runs N] [--megabytes M]
#
# The other end is C (bench/c/proxy_tools.c): a consumer that times from
# the first byte to EOF, or a producer.  Ruby cases: stock 3.4.5 and the
# patched ruby without a scheduler, under CRuby's test scheduler and Async
# + io-event (stock), and under IO::Uring::Scheduler (patched, #io_splice).
# C baselines: sendfile(2), and splice(2) into the file.  Best of N; MB/s
# and the ratio to the C baseline.
#
#   ruby bench/copy_stream.rb --copy DIRECTION MODE FILE [PORT]   (one copy)
require "optparse"
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

if ARGV.first == "--copy"
  _, direction, mode, path, port = ARGV
  if direction == "to-socket"
    in_mode(mode) do
      File.open(path, "rb") do |file|
        socket = TCPSocket.new("127.0.0.1", Integer(port))
        IO.copy_stream(file, socket)
        socket.close
      end
    end
  else
    server = TCPServer.new("127.0.0.1", 0)
    puts server.addr[1]
    $stdout.flush
    in_mode(mode) do
      socket = server.accept
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      bytes = File.open(path, "wb") { |file| IO.copy_stream(socket, file) }
      puts "#{bytes} #{Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0}"
      socket.close
    end
  end
  exit
end

top = File.expand_path("..", __dir__)
opts = { runs: 3, megabytes: 1024 }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--megabytes N", Integer) { |v| opts[:megabytes] = v }
end.parse!

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
tools = File.join(top, "build/bench/proxy_tools")
abort "bench: make and make stock first" unless File.executable?(stock) && File.executable?(patched)
unless File.executable?(tools) && File.mtime(tools) > File.mtime(File.join(__dir__, "c/proxy_tools.c"))
  Dir.mkdir(File.dirname(tools)) unless Dir.exist?(File.dirname(tools))
  system("cc", "-O2", "-DHAVE_LIBURING", "-I#{top}/build/liburing/include", "-o", tools,
         File.join(__dir__, "c/proxy_tools.c"), "#{top}/build/liburing/lib/liburing.a") or abort "bench: cc failed"
end
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }
bytes = opts[:megabytes] * 1024 * 1024
dir = File.join(top, "build/bench")
source = File.join(dir, "copy_stream.src")
target = File.join(dir, "copy_stream.dst")
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

# file -> socket: the C consumer times it.
def to_socket(env, tools, command, bytes)
  consumer = IO.popen([tools, "consume"])
  port = consumer.gets
  system(env, *command, port.chomp, err: File::NULL) or return nil
  received, seconds = consumer.read.split.map(&:to_f)
  received.to_i == bytes ? bytes / seconds / 1e6 : nil
ensure
  consumer&.close
end

# socket -> file: the receiver times it from the accepted connection.
def from_socket(env, tools, command, bytes, target)
  receiver = IO.popen(env, command, err: File::NULL)
  port = receiver.gets or return nil
  system(tools, "produce", port.chomp, bytes.to_s) or return nil
  received, seconds = receiver.read.split.map(&:to_f)
  received.to_i == bytes && File.size(target) == bytes ? bytes / seconds / 1e6 : nil
ensure
  receiver&.close
end

def best(runs)
  speeds = runs.times.map { yield }
  speeds.all? ? speeds.max : nil
end

report = lambda do |title, baseline, results|
  puts format("%s, %d MB, best of %d", title, opts[:megabytes], opts[:runs])
  puts format("%-26s %10s %8s", "", "MB/s", "ratio")
  results.each do |name, speed|
    next puts(format("%-26s %10s", name, "n/a")) unless speed
    puts format("%-26s %10.0f %7.2fx", name, speed, speed / results[baseline])
  end
  puts "(ratio: throughput relative to #{baseline}; higher is faster)", ""
end

results = { "C sendfile(2)" => best(opts[:runs]) { to_socket(env, tools, [tools, "sendfile", source], bytes) } }
RUBIES.each do |name, ruby, mode|
  results[name] = best(opts[:runs]) { to_socket(env, tools, [ruby, __FILE__, "--copy", "to-socket", mode, source], bytes) }
end
report.call("file -> TCP socket", "C sendfile(2)", results)

results = { "C splice(2)" => best(opts[:runs]) { from_socket(env, tools, [tools, "receive", target], bytes, target) } }
RUBIES.each do |name, ruby, mode|
  results[name] = best(opts[:runs]) { from_socket(env, tools, [ruby, __FILE__, "--copy", "from-socket", mode, target], bytes, target) }
end
report.call("TCP socket -> file", "C splice(2)", results)
File.delete(target) if File.exist?(target)
