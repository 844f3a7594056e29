# frozen_string_literal: true
#
# A TCP proxy on 127.0.0.1 (producer -> proxy -> consumer), side by side.
#
#   ruby bench/proxy.rb [--runs N] [--megabytes M]
#
# The producer and the consumer are C (bench/c/proxy_tools.c), cheap on
# purpose (sendfile(2) from a memfd, splice(2) to /dev/null) so that the
# proxy is what is measured; the consumer times from the first byte to EOF.  The proxy is IO.copy_stream(socket,
# socket) in ruby: stock 3.4.5 and the patched ruby without a scheduler,
# under CRuby's test scheduler, Async + io-event (EPoll and URing
# selectors) on stock, and IO::Uring::Scheduler; or C, with splice(2) (the
# physical limit: no byte in user space), with the same splices as linked
# io_uring operations, and with read(2)/write(2).
# Best of N (default 3) in one run; MB/s and the ratio to the C splice
# proxy.
#
#   ruby bench/proxy.rb --proxy MODE PORT     (one ruby proxy)
require "optparse"
require "socket"

def proxy(mode, port)
  server = TCPServer.new("127.0.0.1", 0)
  puts server.addr[1]
  $stdout.flush
  copy = proc do
    src = server.accept
    dst = TCPSocket.new("127.0.0.1", port)
    IO.copy_stream(src, dst)
    dst.close
    src.close
  end
  case mode
  when "none" then copy.call
  when "uring", "test-scheduler"
    if mode == "uring"
      require "io/uring"
      make = proc { IO::Uring::Scheduler.new }
    else
      require ENV.fetch("RUBY_TEST_SCHEDULER")
      make = proc { Scheduler.new }
    end
    Thread.new do
      Fiber.set_scheduler(make.call)
      Fiber.schedule(&copy)
    end.join
  when "async-epoll", "async-uring"
    require "async"
    require "io/event"
    selector = mode == "async-epoll" ? IO::Event::Selector::EPoll : IO::Event::Selector::URing
    Thread.new do
      Fiber.set_scheduler(Async::Scheduler.new(selector: selector.new(Fiber.current)))
      Fiber.schedule(&copy)
    end.join
  else
    abort "unknown mode #{mode}"
  end
end

if ARGV.first == "--proxy"
  proxy(ARGV[1], Integer(ARGV[2]))
  exit
end

top = File.expand_path("..", __dir__)
opts = { runs: 3, megabytes: 2048 }
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

CASES = [
  ["C splice(2)", [tools, "splice"]],
  ["C io_uring splice", [tools, "uring"]],
  ["C read/write", [tools, "readwrite"]],
  ["stock, no scheduler", [stock, __FILE__, "--proxy", "none"]],
  ["stock, test scheduler", [stock, __FILE__, "--proxy", "test-scheduler"]],
  ["stock, Async EPoll", [stock, __FILE__, "--proxy", "async-epoll"]],
  ["stock, Async URing", [stock, __FILE__, "--proxy", "async-uring"]],
  ["patched, no scheduler", [patched, __FILE__, "--proxy", "none"]],
  ["patched, IO::Uring", [patched, __FILE__, "--proxy", "uring"]],
].freeze
BASELINE = "C splice(2)"
bytes = opts[:megabytes] * 1024 * 1024

# One transfer through `command`; MB/s, or nil if it failed.
def transfer(env, tools, command, bytes)
  consumer = IO.popen([tools, "consume"])
  consumer_port = Integer(consumer.gets)
  proxy = IO.popen(env, [*command, consumer_port.to_s], err: File::NULL)
  proxy_port = Integer(proxy.gets || (return nil))
  system(tools, "produce", proxy_port.to_s, bytes.to_s) or return nil
  received, seconds = consumer.read.split.map(&:to_f)
  received.to_i == bytes ? bytes / seconds / 1e6 : nil
ensure
  [consumer, proxy].each do |io|
    next unless io
    Process.kill(:TERM, io.pid) rescue nil
    io.close
  end
end

results = CASES.to_h do |name, command|
  speeds = opts[:runs].times.map { transfer(env, tools, command, bytes) }
  [name, speeds.all? ? speeds.max : nil]
end

puts format("TCP proxy on 127.0.0.1, %d MB, best of %d", opts[:megabytes], opts[:runs])
puts format("%-26s %10s %8s", "", "MB/s", "ratio")
results.each do |name, speed|
  next puts(format("%-26s %10s", name, "n/a")) unless speed
  puts format("%-26s %10.0f %7.2fx", name, speed, speed / results[BASELINE])
end
puts "(ratio: throughput relative to #{BASELINE}; higher is faster)"
