# frozen_string_literal: true
#
# A proxy between two stream sockets (producer -> proxy -> consumer), side by
# side, over UNIX socketpairs and over TCP on 127.0.0.1.
#
#   ruby bench/proxy.rb [--runs N] [--megabytes M] [--transport unix,tcp]
#                       [--only REGEX] [--env-patched K=V] [--env-stock K=V]
#
# Every contender gets the same ends: one C harness (`proxy_tools harness`,
# bench/c/proxy_tools.c) makes the two socket pairs, runs the proxy with its
# ends as descriptors 3 (in) and 4 (out), starts the clock when the proxy
# prints "ready", sends M MiB with sendfile(2) from a memfd and splices what
# comes out into /dev/null, in threads of its own, so the proxy is what is
# measured.  The proxy's CPU (user + sys of the proxy process, every thread
# and io_uring worker of it, from wait4(2), less what it had spent by
# "ready": the interpreter's start and requires are not counted) is
# reported per GB moved next to the throughput.
#
# Contenders: C proxies (`proxy_tools splice-fds`, `splice-nonblock-fds`,
# `uring-fds`, `readwrite-fds`): splice(2) through a pipe (the physical
# limit: no byte in user space), the same on O_NONBLOCK descriptors with
# poll(2) when a side is not ready (the limit for a runtime whose
# descriptors are non-blocking, as ruby's are), the same splices as linked
# io_uring operations, and read(2)/write(2); and
# IO.copy_stream(socket, socket) in ruby (this file, --proxy MODE): stock
# 3.4.5 without a scheduler, under CRuby's test scheduler, and under Async +
# io-event (EPoll and URing selectors); the patched ruby without a scheduler
# and under IO::Uring::Scheduler.
#
# N runs (default 5) interleaved: run 1 of every transport and contender,
# then run 2, ...  Per transport, a markdown table: median MB/s (MB = 10^6
# bytes) and its range, median CPU ms per GB (10^9 bytes) and its range, and
# the median's ratio to C splice(2)'s.  Every run goes to
# bench/results/proxy.csv (transport,contender,run,mb_s,cpu_ms_per_gb; the
# figures are empty for a failed run).  A failed run is reported with the
# end of the harness's stderr; the others go on.  --only selects contenders
# by name (case-insensitive); --env-patched and --env-stock (repeatable) add
# to the environment of the patched or the stock ruby's proxies.
#
#   ruby bench/proxy.rb --proxy MODE     (one ruby proxy, run by the harness)
#
# MODE: none | test-scheduler | async-epoll | async-uring | uring.
require "optparse"
require_relative "lib/stats"
require "open3"
require "fileutils"
require "socket"

# IO.copy_stream from descriptor 3 to descriptor 4.  Both are made
# non-blocking, as a socket ruby accepts or connects is.  "ready" is printed
# once everything is set up: under a scheduler, from the scheduled fiber,
# just before the copy.
def proxy(mode)
  require "io/nonblock"
  src = BasicSocket.for_fd(3)
  dst = BasicSocket.for_fd(4)
  src.nonblock = true
  dst.nonblock = true
  copy = proc do
    $stdout.write("ready\n")
    $stdout.flush
    IO.copy_stream(src, dst)
    dst.close
    src.close
  end
  make = case mode
         when "none" then nil
         when "uring"
           require "io/uring"
           proc { IO::Uring::Scheduler.new }
         when "test-scheduler"
           require ENV.fetch("RUBY_TEST_SCHEDULER")
           proc { Scheduler.new }
         when "async-epoll", "async-uring"
           require "async"
           require "io/event"
           selector = mode == "async-epoll" ? IO::Event::Selector::EPoll : IO::Event::Selector::URing
           proc { Async::Scheduler.new(selector: selector.new(Fiber.current)) }
         else
           abort "unknown mode #{mode}"
         end
  return copy.call unless make

  Thread.new do
    Fiber.set_scheduler(make.call)
    Fiber.schedule(&copy)
  end.join
end

if ARGV.first == "--proxy"
  proxy(ARGV[1])
  exit
end

top = File.expand_path("..", __dir__)
opts = { runs: 5, megabytes: 2048, transports: %w[unix tcp], only: nil,
         env_patched: {}, env_stock: {} }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--megabytes M", Integer, "MiB through each proxy per run") { |v| opts[:megabytes] = v }
  o.on("--transport LIST", Array, "unix,tcp") { |v| opts[:transports] = v }
  o.on("--only REGEX", "contenders whose name matches") { |v| opts[:only] = Regexp.new(v, Regexp::IGNORECASE) }
  o.on("--env-patched K=V") { |v| k, val = v.split("=", 2); opts[:env_patched][k] = val.to_s }
  o.on("--env-stock K=V") { |v| k, val = v.split("=", 2); opts[:env_stock][k] = val.to_s }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1
bad = opts[:transports] - %w[unix tcp]
abort "bench: unknown transport #{bad.join(", ")} (unix, tcp)" unless bad.empty?

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
tools = File.join(top, "build/bench/proxy_tools")
abort "bench: make and make stock first" unless File.executable?(stock) && File.executable?(patched)
unless File.executable?(tools) && File.mtime(tools) > File.mtime(File.join(__dir__, "c/proxy_tools.c"))
  FileUtils.mkdir_p(File.dirname(tools))
  system("cc", "-O2", "-DHAVE_LIBURING", "-I#{top}/build/liburing/include", "-o", tools,
         File.join(__dir__, "c/proxy_tools.c"), "#{top}/build/liburing/lib/liburing.a", "-lpthread") or abort "bench: cc failed"
end
base_env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }
env_c = base_env
env_stock = base_env.merge(opts[:env_stock])
env_patched = base_env.merge(opts[:env_patched])

BASELINE = "C splice(2)"
contenders = [
  [BASELINE, env_c, [tools, "splice-fds"]],
  ["C splice(2), non-blocking", env_c, [tools, "splice-nonblock-fds"]],
  ["C io_uring splice", env_c, [tools, "uring-fds"]],
  ["C read/write", env_c, [tools, "readwrite-fds"]],
  ["stock, no scheduler", env_stock, [stock, __FILE__, "--proxy", "none"]],
  ["stock, test scheduler", env_stock, [stock, __FILE__, "--proxy", "test-scheduler"]],
  ["stock, Async EPoll", env_stock, [stock, __FILE__, "--proxy", "async-epoll"]],
  ["stock, Async URing", env_stock, [stock, __FILE__, "--proxy", "async-uring"]],
  ["patched, no scheduler", env_patched, [patched, __FILE__, "--proxy", "none"]],
  ["patched, IO::Uring", env_patched, [patched, __FILE__, "--proxy", "uring"]],
]
contenders.select! { |name, _, _| name.match?(opts[:only]) } if opts[:only]
abort "bench: --only matches no contender" if contenders.empty?
bytes = opts[:megabytes] * 1024 * 1024
# generous: the slowest contender is far above 10 MB/s
timeout = 120 + bytes / 10_000_000

Run = Struct.new(:mb_s, :cpu_ms_per_gb, :error)

# One transfer through `command` under the harness.
def transfer(tools, transport, bytes, timeout, env, command)
  out, err, status = Open3.capture3(env, tools, "harness", "-t", timeout.to_s, transport, bytes.to_s, "--", *command)
  received, seconds, user, sys = out.split.map { |f| Float(f) } if out.split.size >= 4
  unless status.success? && received.to_i == bytes && seconds.to_f > 0
    tail = err.lines.last(6).join.strip
    return Run.new(nil, nil, tail.empty? ? "harness: #{status}" : tail)
  end
  Run.new(bytes / seconds / 1e6, (user + sys) * 1e3 / (bytes / 1e9), nil)
rescue ArgumentError, SystemCallError => e
  Run.new(nil, nil, e.message)
end

keys = opts[:transports].product(contenders.map(&:first))
commands = contenders.to_h { |name, env, command| [name, [env, command]] }
results = BenchStats.interleave(opts[:runs], keys) do |transport, name|
  transfer(tools, transport, bytes, timeout, *commands[name])
end

TITLES = { "unix" => "UNIX socketpairs", "tcp" => "TCP on 127.0.0.1" }.freeze
opts[:transports].each do |transport|
  puts format("### proxy, %s: %d MiB, %d run(s) interleaved", TITLES[transport], opts[:megabytes], opts[:runs])
  puts
  puts "| contender | MB/s median | MB/s range | CPU ms/GB median | CPU ms/GB range | vs #{BASELINE} |"
  puts "|---|---:|---:|---:|---:|---:|"
  base = BenchStats.median_of(results[[transport, BASELINE]], :mb_s)
  contenders.each do |name, _, _|
    puts BenchStats.row(name, results[[transport, name]], %i[mb_s cpu_ms_per_gb], base: base)
  end
  puts
  puts "(MB/s: 10^6 bytes a second from \"ready\" to the consumer's EOF, higher is faster; " \
       "CPU: user + sys of the proxy process after \"ready\" per 10^9 bytes, lower is cheaper; " \
       "ratio: median MB/s over #{BASELINE}'s)"
  BenchStats.print_failures(results, keys.select { |t, _| t == transport })
  puts
end

csv = BenchStats.write_csv("proxy.csv", "transport,contender,run,mb_s,cpu_ms_per_gb", keys, results) do |r|
  [r.mb_s&.round(1), r.cpu_ms_per_gb&.round(1)]
end
puts "runs: #{csv}"
