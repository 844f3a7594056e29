# frozen_string_literal: true
#
# Registered buffers (Fiber::Scheduler#io_buffer_register): random O_DIRECT
# reads by FIBERS fibers under IO::Uring::Scheduler, each reading into its
# own slice of one arena that is registered (READ_FIXED) or not (READ),
# next to the same reads in C at the same depth (bench/c/fixed_reads.c,
# the kernel's own ceiling); a pipe control (registration should change
# nothing there); and the cost of registering, per MiB.
#
#   ruby bench/buffers.rb [--runs N] [--ops N] [--fibers N] [--file PATH]
#
# The file (default 256 MiB of random bytes in $TMPDIR, which must allow
# O_DIRECT) is made once.  Runs are interleaved; each row gives the median
# operations per second and the CPU (user + sys) per operation in
# microseconds, with their ranges, and the ratio of CPU per operation to
# the unregistered contender's.  Every run goes to bench/results/buffers.csv.
#
#   ruby bench/buffers.rb --child MODE BLOCK OPS FIBERS FILE  (one run)
require "optparse"
require_relative "lib/stats"

def child(mode, block, ops, fibers, path)
  require "io/uring"
  Warning[:experimental] = false
  result = nil
  Thread.new do
    scheduler = IO::Uring::Scheduler.new
    Fiber.set_scheduler(scheduler)
    Fiber.schedule do
      arena = IO::Buffer.new(block * fibers, IO::Buffer::MAPPED)
      if mode.end_with?("registered")
        scheduler.io_buffer_register(arena) or abort "registration refused"
      end
      if mode.start_with?("pipe")
        r, w = IO.pipe
        per = ops / fibers
        writer = Fiber.schedule do
          data = IO::Buffer.new(block)
          (per * fibers).times { data.write(w, block) }
        end
        t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        c0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
        slice = arena.slice(0, block)
        (per * fibers).times { slice.read(r, block) }
        done = per * fibers
      else
        file = File.open(path, File::RDONLY | File::DIRECT)
        blocks = file.size / block
        per = ops / fibers
        t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        c0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
        workers = fibers.times.map do |i|
          Fiber.schedule do
            slice = arena.slice(i * block, block)
            random = Random.new(i)
            per.times { slice.pread(file, random.rand(blocks) * block, block) == block or raise "short read" }
          end
        end
        sleep 0.001 while workers.any?(&:alive?)
        done = per * fibers
      end
      t = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      c = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - c0
      stats = scheduler.io_buffer_stats
      result = "#{t} #{c} #{done} #{stats[:fixed_operations]}"
    end
  end.join
  puts result
end

def registration_cost(mib)
  require "io/uring"
  Warning[:experimental] = false
  out = nil
  Thread.new do
    s = IO::Uring::Scheduler.new
    Fiber.set_scheduler(s)
    Fiber.schedule do
      buffer = IO::Buffer.new(mib << 20, IO::Buffer::MAPPED)
      s.io_buffer_register(IO::Buffer.new(4096))  # the table, made once
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      s.io_buffer_register(buffer) or abort "registration refused"
      t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      s.io_buffer_unregister(buffer)
      t2 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      out = [(t1 - t0) * 1e6 / mib, (t2 - t1) * 1e6 / mib]
    end
  end.join
  out
end

if ARGV.first == "--child"
  _, mode, block, ops, fibers, path = ARGV
  child(mode, Integer(block), Integer(ops), Integer(fibers), path)
  exit
end

top = File.expand_path("..", __dir__)
opts = { runs: 5, ops: 64_000, fibers: 32, file: File.join(ENV.fetch("TMPDIR", "/tmp"), "bench_buffers.dat") }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--ops N", Integer) { |v| opts[:ops] = v }
  o.on("--fibers N", Integer) { |v| opts[:fibers] = v }
  o.on("--file PATH") { |v| opts[:file] = v }
end.parse!

unless File.size?(opts[:file]) == 256 << 20
  File.open(opts[:file], "wb") { |f| 256.times { f.write(Random.bytes(1 << 20)) } }
end
baseline = File.join(top, "build/bench/fixed_reads")
unless File.executable?(baseline) && File.mtime(baseline) > File.mtime(File.join(__dir__, "c/fixed_reads.c"))
  system("mkdir", "-p", File.dirname(baseline))
  system("cc", "-O2", "-o", baseline, File.join(__dir__, "c/fixed_reads.c"),
         "-I#{top}/build/liburing/include", "#{top}/build/liburing/lib/liburing.a") or abort "bench: cc failed"
end
ruby = File.join(top, "build/ruby/bin/ruby")

Run = Struct.new(:seconds, :cpu, :ops, :fixed, :error) do
  def rate = ops / seconds
  def cpu_us = cpu * 1e6 / ops
end

def measure(cmd)
  out = IO.popen(cmd, err: %i[child out], &:read)
  return Run.new(nil, nil, nil, nil, out) unless $?.success?
  seconds, cpu, ops, fixed = out.split.map(&:to_f)
  Run.new(seconds, cpu, ops, fixed, nil)
end

cases = []
[4096, 65536].each do |block|
  ops = block == 4096 ? opts[:ops] : opts[:ops] / 4
  cases << [block, "C READ", [baseline, opts[:file], block.to_s, ops.to_s, opts[:fibers].to_s, "plain"]]
  cases << [block, "C READ_FIXED", [baseline, opts[:file], block.to_s, ops.to_s, opts[:fibers].to_s, "fixed"]]
  %w[file file-registered].each do |mode|
    cases << [block, "IO::Uring #{mode}", [ruby, __FILE__, "--child", mode, block.to_s, ops.to_s, opts[:fibers].to_s, opts[:file]]]
  end
end
[4096].each do |block|
  %w[pipe pipe-registered].each do |mode|
    cases << [block, "IO::Uring #{mode} (control)", [ruby, __FILE__, "--child", mode, block.to_s, (opts[:ops] * 4).to_s, opts[:fibers].to_s, opts[:file]]]
  end
end

keys = cases.map { |b, name, _| [b, name] }
commands = cases.to_h { |b, name, cmd| [[b, name], cmd] }
results = BenchStats.interleave(opts[:runs], keys) { |key| measure(commands[key]) }

puts "### Registered buffers: #{opts[:fibers]} fibers (C: #{opts[:fibers]} in flight), #{opts[:runs]} run(s) interleaved"
puts
puts "| block | contender | CPU µs/op median | CPU µs/op range | ops/s median | ops/s range | fixed ops | CPU/op vs unregistered |"
puts "|---|---|---:|---:|---:|---:|---:|---:|"
keys.group_by(&:first).each do |block, group|
  group.each do |key|
    name = key[1]
    plain = name.sub(" READ_FIXED", " READ").sub("-registered", "")
    base = BenchStats.median_of(results[[block, plain]], :cpu_us)
    fixed = ->(runs) { runs.first.fixed ? format("%.0f", BenchStats.median(runs.map(&:fixed))) : "" }
    puts BenchStats.row("#{block / 1024} KiB | #{name}", results[key], [:cpu_us, :rate], format: ["%.2f", "%.0f"],
                        base: base, faster: :lower, extra: fixed)
  end
end
puts
puts "(CPU: user + sys of the whole process over the reads, per operation; the ratio is the unregistered contender's CPU per operation over this one's: above 1.00x, registration saves CPU)"
puts
cost = [1, 16, 64].map { |mib| [mib, registration_cost(mib)] }
puts "Registration: " + cost.map { |mib, (reg, unreg)| format("%d MiB: %.0f µs/MiB to register, %.0f to unregister", mib, reg, unreg) }.join("; ")
path = BenchStats.write_csv("buffers.csv", "block,contender,run,seconds,cpu,ops,fixed_ops,error", keys, results) do |r|
  [r.seconds, r.cpu, r.ops, r.fixed, r.error&.lines&.last&.chomp]
end
puts "runs: #{path}"
BenchStats.print_failures(results, keys)
