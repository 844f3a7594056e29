# frozen_string_literal: true
#
# Waiting readers and their buffers: N fibers (default 9,000: two
# descriptors each under this machine's RLIMIT_NOFILE of 20,000) each wait
# to read from their own UNIX socket under IO::Uring::Scheduler, with
# IO#readpartial(16384) (each holds its 16 KiB String while it waits) or
# with #read_pooled(io, 16384) (none holds a buffer: the kernel picks one
# from the scheduler's pool of 64 x 64 KiB when data comes).  Then every
# socket gets one 1 KiB message and every reader takes it.
#
#   ruby bench/read_pooled.rb [--runs N] [--readers N]
#
# Per contender, median and range over interleaved runs: the growth of the
# process's data segment (VmData: memory allocated, touched or not) and of
# its resident set (VmRSS) from before the readers start until they all
# wait, per reader; the seconds from the first message sent to the last
# one read; and the CPU per message.  `--strace` instead counts the system
# calls of one run of each (strace -f -c, 1,000 readers).
#
#   ruby bench/read_pooled.rb --child MODE READERS   (one run: prints fields)
require "optparse"
require_relative "lib/stats"

def vm(field)
  File.read("/proc/self/status")[/^#{field}:\s+(\d+) kB/, 1].to_i * 1024
end

def child(mode, readers)
  require "io/uring"
  require "socket"
  need = readers * 2 + 256
  soft, hard = Process.getrlimit(:NOFILE)
  begin
    Process.setrlimit(:NOFILE, [need, hard].max, [need, hard].max) if soft < need
  rescue SystemCallError
    abort "bench: #{readers} readers need #{need} descriptors (RLIMIT_NOFILE is #{soft}/#{hard})"
  end
  pairs = readers.times.map { UNIXSocket.pair }
  message = ("x" * 1024).freeze
  out = nil
  Thread.new do
    scheduler = IO::Uring::Scheduler.new
    Fiber.set_scheduler(scheduler)
    Fiber.schedule do
      GC.start
      data0, rss0 = vm("VmData"), vm("VmRSS")
      scheduler.read_pool(64, 65536) if mode == "pooled"  # counted: the pool is what the readers share
      done = 0
      fibers = pairs.map do |a, _|
        if mode == "pooled"
          Fiber.schedule { done += 1 if scheduler.read_pooled(a, 16384)&.bytesize == 1024 }
        else
          Fiber.schedule { done += 1 if a.readpartial(16384).bytesize == 1024 }
        end
      end
      data1, rss1 = vm("VmData"), vm("VmRSS")
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      c0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
      pairs.each { |_, b| b.write(message) }
      sleep 0.001 while fibers.any?(&:alive?)
      t = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      c = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - c0
      abort "bench: #{done} of #{readers} readers got their message" unless done == readers
      out = [(data1 - data0).to_f / readers, (rss1 - rss0).to_f / readers, t, c * 1e6 / readers].join(" ")
    end
  end.join
  puts out
end

if ARGV.first == "--child"
  child(ARGV[1], Integer(ARGV[2]))
  exit
end

opts = { runs: 5, readers: 9_000, strace: false }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--readers N", Integer) { |v| opts[:readers] = v }
  o.on("--strace") { opts[:strace] = true }
end.parse!
top = File.expand_path("..", __dir__)
ruby = File.join(top, "build/ruby/bin/ruby")
modes = { "readpartial" => "IO#readpartial(16384)", "pooled" => "#read_pooled(io, 16384)" }

if opts[:strace]
  modes.each do |mode, name|
    out = IO.popen(["strace", "-f", "-c", "-o", "/dev/stdout", ruby, __FILE__, "--child", mode, "1000"], &:read)
    calls = out.lines.grep(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+/).to_h { |l| f = l.split; [f.last, f[3].to_i] }
    top_calls = calls.sort_by { |_, n| -n }.first(6).map { |c, n| "#{c} #{n}" }.join(", ")
    puts "#{name}, 1,000 readers: #{top_calls}"
  end
  exit
end

Run = Struct.new(:data, :rss, :seconds, :cpu_us, :error)
results = BenchStats.interleave(opts[:runs], modes.keys) do |mode|
  out = IO.popen([ruby, __FILE__, "--child", mode, opts[:readers].to_s], err: %i[child out], &:read)
  if $?.success?
    Run.new(*out.split.map(&:to_f), nil)
  else
    Run.new(nil, nil, nil, nil, out)
  end
end
puts "### #{opts[:readers]} waiting readers, IO::Uring::Scheduler, #{opts[:runs]} run(s) interleaved"
puts
puts "| reader | VmData bytes/reader | range | VmRSS bytes/reader | range | s to read all | range | CPU µs/message | range | vs readpartial (VmData) |"
puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
base = BenchStats.median_of(results["readpartial"], :data)
modes.each do |mode, name|
  puts BenchStats.row(name, results[mode], [:data, :rss, :seconds, :cpu_us], format: ["%.0f", "%.0f", "%.3f", "%.1f"],
                      base: base, faster: :lower)
end
puts
puts "(VmData, VmRSS: growth from before the readers start until all wait, per reader, the pooled readers' 4 MiB pool included; ratio: readpartial's VmData per reader over this one's)"
path = BenchStats.write_csv("read_pooled.csv", "reader,run,vmdata_per_reader,vmrss_per_reader,seconds,cpu_us_per_message,error",
                            modes.keys, results) { |r| [r.data, r.rss, r.seconds, r.cpu_us, r.error&.lines&.last&.chomp] }
puts "runs: #{path}"
BenchStats.print_failures(results, modes.keys)
