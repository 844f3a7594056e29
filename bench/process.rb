# frozen_string_literal: true
#
# Process::Handle (pidfd-backed children) against pids, with and without
# IO::Uring::Scheduler (#process_open adopts handles, #process_wait waits
# with IORING_OP_WAITID).  Three workloads:
#
#   spawn   spawn+wait throughput: 500 x /bin/true per run, one at a time.
#           Process.spawn + Process.wait (vfork + waitpid) against
#           Process::Handle.spawn + #wait + #close (clone(CLONE_PIDFD) +
#           waitid(P_PIDFD)), no scheduler; and the C floor of both
#           (bench/c/spawn_wait.c).  Per spawn+wait: wall µs, CPU µs of the
#           parent (CLOCK_PROCESS_CPUTIME_ID) and of the reaped children
#           (Process.times cutime + cstime; getrusage in C).
#   wait    N = 1, 100, 1,000 concurrent children (/usr/bin/sleep 0.5):
#             handle  under IO::Uring::Scheduler, a fiber per child doing
#                     Process::Handle.spawn + #wait (adopted: WAITID on the
#                     handle's pidfd)
#             pid     the same with Process.spawn + Process.wait2(pid) (the
#                     scheduler's #process_wait(pid): a pidfd opened per
#                     wait, then WAITID)
#             detach  no scheduler: Process.spawn + Process.detach(pid) (a
#                     thread per child), joined with #value
#           Wall time (~0.5 s + the time to spawn N); exit->resume: the
#           median over children of (waiter resumed - spawned - 0.5 s),
#           counting only children whose exit falls after the spawn loop
#           ended (earlier ones wait for the spawning fiber or thread to
#           yield, in every contender alike), and "drain": all waits done -
#           (last spawn + 0.5 s); both include sleep(1)'s own start-up.
#           Peak extra threads (/proc/self/status Threads, sampled every 10
#           spawns and every 10 ms while waiting, minus the count before);
#           peak RSS growth (VmHWM, reset through /proc/self/clear_refs
#           before the spawns, minus VmRSS then) in KiB, and per child; the
#           parent's CPU per child.
#   churn   a supervisor (no scheduler) keeps 200 workers alive
#           (/usr/bin/sleep 0.05..0.3 s, respawned as they exit, checked
#           every 10 ms with a non-blocking wait) and sends SIGTERM to 2
#           random workers it believes alive every 10 ms, for 3 s, while a
#           rogue thread steals statuses with Process.wait(-1, WNOHANG) in a
#           loop.  pid: workers are pids; handle: Process::Handle.  Counted:
#           kills aimed at a worker the rogue had already reaped ("stale":
#           the pid may by then name another process); "misdirected": of
#           those, the signals that reached a process (pid: probes that
#           succeeded; handle: kills that did not raise ESRCH, must be 0);
#           statuses the supervisor lost (ECHILD).
#           Safety: the rogue reaps under a Mutex that the supervisor holds
#           around "was it stolen?" + the kill, so SIGTERM only ever goes
#           to a child of this run not yet reaped.  In the pid variant a
#           kill at a stolen pid is sent as signal 0 (a probe, harmless):
#           a success means the pid was reused and the TERM would have hit
#           another process (ours or anyone's; pid_max, printed with
#           the results, is 32768 on the 2-core test machine).
#           The handle variant sends the real SIGTERM through the pidfd.
#
#   build/ruby/bin/ruby bench/process.rb [--runs N] [--only spawn,wait,churn]
#                                        [--spawns N] [--churn-seconds S]
#
# The C baseline is built by this script when /tmp/spawn_wait is missing or
# older than its source: gcc -O2 bench/c/spawn_wait.c -o /tmp/spawn_wait.
# Every run (default 5) is a fresh child process (the C baseline runs as
# itself), interleaved: run 1 of every workload and contender, then run 2,
# ...  Tables give the median [min–max] over runs.  Every run goes to
# bench/results/process.csv.
#
#   ruby bench/process.rb --child WORKLOAD MODE ARG...   (one run: prints
#                                                        "result k=v ...")
require "optparse"
require_relative "lib/stats"

SLEEP = "/usr/bin/sleep"
TRUE_BIN = "/bin/true"

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
def cpu_now = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

def children_cpu
  t = Process.times
  t.cutime + t.cstime
end

def proc_status
  File.read("/proc/self/status").scan(/^(VmRSS|VmHWM|Threads):\s+(\d+)/).to_h { |k, v| [k.to_sym, v.to_i] }
end

def report(**fields)
  puts "result " + fields.map { |k, v| "#{k}=#{v}" }.join(" ")
end

# --- children ----------------------------------------------------------------

def child_spawn(mode, n)
  one = case mode
        when "pid"
          -> { Process.wait(Process.spawn([TRUE_BIN, "true"])); $?.success? or raise "child failed: #{$?}" }
        when "handle"
          -> { h = Process::Handle.spawn([TRUE_BIN, "true"]); h.wait.success? or raise "child failed"; h.close }
        else abort "unknown mode #{mode}"
        end
  10.times { one.call }
  GC.start
  t0, c0, k0 = now, cpu_now, children_cpu
  n.times { one.call }
  t, c, k = now - t0, cpu_now - c0, children_cpu - k0
  report(wall_us: t * 1e6 / n, cpu_self_us: c * 1e6 / n, cpu_children_us: k * 1e6 / n)
end

def child_wait(mode, n)
  if mode == "detach"
    warm = -> { Process.detach(Process.spawn([TRUE_BIN, "true"])).value }
  else
    require "io/uring"
    Warning[:experimental] = false
    warm = -> { Process::Handle.spawn([TRUE_BIN, "true"]).tap(&:wait).close }
  end
  warm.call
  GC.start
  File.write("/proc/self/clear_refs", "5")  # VmHWM := VmRSS
  base = proc_status
  peak_threads = base[:Threads]
  sample = -> { t = proc_status[:Threads]; peak_threads = t if t > peak_threads }
  spawned = Array.new(n)
  resumed = Array.new(n)
  failed = 0
  adopted = 0
  t0 = c0 = k0 = t_spawned = t_done = nil

  if mode == "detach"
    t0, c0, k0 = now, cpu_now, children_cpu
    threads = Array.new(n) do |i|
      pid = Process.spawn([SLEEP, "sleep"], "0.5")
      spawned[i] = now
      th = Process.detach(pid)
      sample.call if i % 10 == 9 || i == n - 1
      th
    end
    t_spawned = now
    sample.call
    threads.each_with_index do |th, i|
      failed += 1 unless th.value.success?
      resumed[i] = now
    end
    t_done = now
  else
    scheduler = IO::Uring::Scheduler.new
    Fiber.set_scheduler(scheduler)
    Fiber.schedule do
      done = Thread::Queue.new
      waiting = true
      t0, c0, k0 = now, cpu_now, children_cpu
      n.times do |i|
        Fiber.schedule do
          if mode == "handle"
            h = Process::Handle.spawn([SLEEP, "sleep"], "0.5")
            spawned[i] = now
            adopted += 1 if h.adopted?
            status = h.wait
            resumed[i] = now
            h.close
          else
            pid = Process.spawn([SLEEP, "sleep"], "0.5")
            spawned[i] = now
            _, status = Process.wait2(pid)
            resumed[i] = now
          end
          failed += 1 unless status.success?
          done << i
        end
        sample.call if i % 10 == 9 || i == n - 1
      end
      t_spawned = now
      Fiber.schedule { (sample.call; sleep 0.01) while waiting }
      n.times { done.pop }
      t_done = now
      waiting = false
    end
    Fiber.set_scheduler(nil)
  end
  c, k = cpu_now - c0, children_cpu - k0
  after = proc_status
  late = (0...n).select { |i| spawned[i] + 0.5 > t_spawned }
  lat = late.map { |i| resumed[i] - spawned[i] - 0.5 }
  report(wall: t_done - t0, spawn: t_spawned - t0,
         **(lat.empty? ? {} : { lat_p50_ms: BenchStats.median(lat) * 1e3 }), lat_n: late.size,
         drain_ms: (t_done - (spawned.last + 0.5)) * 1e3,
         threads: peak_threads - base[:Threads],
         rss_kib: after[:VmHWM] - base[:VmRSS], rss_end_kib: after[:VmRSS] - base[:VmRSS],
         cpu_self_us: c * 1e6 / n, cpu_children_us: k * 1e6 / n,
         failed: failed, adopted: adopted)
end

Worker = Struct.new(:pid, :handle)

def child_churn(mode, seconds, size)
  tick = 0.01
  kills_per_tick = 2
  lock = Mutex.new
  stolen = {}  # pid => true: reaped by the rogue
  stop = false
  rogue = Thread.new do
    until stop
      lock.synchronize do
        while (pid = Process.wait(-1, Process::WNOHANG))
          stolen[pid] = true
        end
      rescue Errno::ECHILD
      end
      sleep 0.0005
    end
  end

  start = lambda do
    duration = format("%.3f", 0.05 + rand * 0.25)
    if mode == "handle"
      h = Process::Handle.spawn([SLEEP, "sleep"], duration)
      Worker.new(h.pid, h)
    else
      Worker.new(Process.spawn([SLEEP, "sleep"], duration), nil)
    end
  end
  live = []
  c = Hash.new(0)
  t0, c0, k0 = now, cpu_now, children_cpu
  deadline = t0 + seconds
  while now < deadline
    # Reap what exited, as a supervisor does: without blocking.
    live.reject! do |w|
      begin
        status = w.handle ? w.handle.wait_nonblock : (Process.wait(w.pid, Process::WNOHANG) && $?)
      rescue Errno::ECHILD
        c[:lost] += 1
        w.handle&.close
        next true
      end
      next false unless status
      c[:reaped] += 1
      c[:termed] += 1 if status.termsig == Signal.list["TERM"]
      w.handle&.close
      true
    end
    (size - live.size).times { live << start.call; c[:spawned] += 1 }
    kills_per_tick.times do
      w = live.sample
      lock.synchronize do
        stale = stolen.key?(w.pid)
        c[:kills] += 1
        c[:stale] += 1 if stale
        if w.handle
          begin
            w.handle.kill(:TERM)
            c[:misdirected] += 1 if stale
          rescue Errno::ESRCH
            c[:esrch] += 1
          end
        elsif stale
          # Reaped already: probe only.  Success = the pid was reused.
          begin
            Process.kill(0, w.pid)
            c[:misdirected] += 1
          rescue Errno::ESRCH
            c[:esrch] += 1
          rescue Errno::EPERM
            c[:misdirected] += 1
          end
        else
          Process.kill(:TERM, w.pid)  # our child, not reaped: the lock holds the rogue off
        end
      end
    end
    sleep tick
  end
  t, cpu, k = now - t0, cpu_now - c0, children_cpu - k0
  stop = true
  rogue.join
  # Let the rest finish (no more kills); untimed.
  live.each do |w|
    if w.handle
      begin
        w.handle.wait
      rescue Errno::ECHILD
      end
      w.handle.close
    else
      begin
        Process.wait(w.pid)
      rescue Errno::ECHILD
      end
    end
  end
  report(wall: t, spawned: c[:spawned], kills: c[:kills], stale: c[:stale], misdirected: c[:misdirected],
         esrch: c[:esrch], lost: c[:lost], reaped: c[:reaped], termed: c[:termed],
         stolen: stolen.size, cpu_self_us: cpu * 1e6 / c[:spawned], cpu_children_us: k * 1e6 / c[:spawned])
end

if ARGV.first == "--child"
  _, workload, mode, *args = ARGV
  case workload
  when "spawn" then child_spawn(mode, Integer(args[0]))
  when "wait" then child_wait(mode, Integer(args[0]))
  when "churn" then child_churn(mode, Float(args[0]), Integer(args[1]))
  else abort "unknown workload #{workload}"
  end
  exit
end

# --- the runner ----------------------------------------------------------------

top = File.expand_path("..", __dir__)
opts = { runs: 5, only: %w[spawn wait churn], spawns: 500, churn_seconds: 3.0 }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--only LIST", Array, "spawn,wait,churn") { |v| opts[:only] = v }
  o.on("--spawns N", Integer) { |v| opts[:spawns] = v }
  o.on("--churn-seconds S", Float) { |v| opts[:churn_seconds] = v }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1

ruby = File.join(top, "build/ruby/bin/ruby")
baseline = "/tmp/spawn_wait"
source = File.join(__dir__, "c/spawn_wait.c")
unless File.executable?(baseline) && File.mtime(baseline) > File.mtime(source)
  system("gcc", "-O2", source, "-o", baseline) or abort "bench: gcc failed"
end

Run = Struct.new(:values, :error) do
  def [](key) = values[key]
end

def measure(cmd, timeout)
  io = IO.popen(cmd, err: %i[child out])
  watchdog = Thread.new do
    sleep timeout
    Process.kill(:KILL, io.pid)  # our own child only
  rescue Errno::ESRCH
  end
  out = io.read
  io.close
  watchdog.kill
  return Run.new(nil, "#{$?.inspect}: #{out}") unless $?.success?
  line = out.lines.grep(/\Aresult /).last or return Run.new(nil, "no result: #{out}")
  values = line.split.drop(1).to_h { |kv| k, v = kv.split("=", 2); [k.to_sym, Float(v)] }
  return Run.new(nil, "#{values[:failed].to_i} children failed: #{out}") if values.fetch(:failed, 0) > 0
  Run.new(values, nil)
rescue ArgumentError => e
  Run.new(nil, "#{e.message}: #{out}")
end

def measure_c(baseline, mode, n)
  out = IO.popen([baseline, mode, n.to_s], err: %i[child out], &:read)
  return Run.new(nil, "#{$?.inspect}: #{out}") unless $?.success?
  _, _, wall, self_us, children_us = out.split
  Run.new({ wall_us: Float(wall), cpu_self_us: Float(self_us), cpu_children_us: Float(children_us) }, nil)
rescue ArgumentError => e
  Run.new(nil, "#{e.message}: #{out}")
end

SPAWN = [
  ["Process.spawn + Process.wait", "pid"],
  ["Process::Handle.spawn + #wait", "handle"],
  ["C vfork + waitpid", "C:vfork"],
  ["C clone(CLONE_PIDFD) + waitid(P_PIDFD)", "C:pidfd"],
].freeze
WAIT_N = [1, 100, 1000].freeze
WAIT = [
  ["handle + WAITID (fibers)", "handle"],
  ["pid, Process.wait2 (fibers)", "pid"],
  ["Process.detach (thread per wait)", "detach"],
].freeze
CHURN = [["pids", "pid"], ["handles", "handle"]].freeze

keys = []
keys.concat(SPAWN.map { |name, _| ["spawn", opts[:spawns], name] }) if opts[:only].include?("spawn")
keys.concat(WAIT_N.flat_map { |n| WAIT.map { |name, _| ["wait", n, name] } }) if opts[:only].include?("wait")
keys.concat(CHURN.map { |name, _| ["churn", 200, name] }) if opts[:only].include?("churn")

results = BenchStats.interleave(opts[:runs], keys) do |key|
  case key
  in ["spawn", _, name]
    mode = SPAWN.assoc(name)[1]
    if mode.start_with?("C:")
      measure_c(baseline, mode.delete_prefix("C:"), opts[:spawns])
    else
      measure([ruby, __FILE__, "--child", "spawn", mode, opts[:spawns].to_s], 120)
    end
  in ["wait", n, name]
    measure([ruby, __FILE__, "--child", "wait", WAIT.assoc(name)[1], n.to_s], 60)
  in ["churn", _, name]
    measure([ruby, __FILE__, "--child", "churn", CHURN.assoc(name)[1], opts[:churn_seconds].to_s, "200"],
            opts[:churn_seconds] + 60)
  end
end

def cell(runs, field, fmt)
  values = runs.reject(&:error).map { |r| r[field] }.compact
  return "n/a" if values.empty?
  m = BenchStats.median(values)
  return format(fmt, m) if values.min == values.max
  "#{format(fmt, m)} [#{format(fmt, values.min)}–#{format(fmt, values.max)}]"
end

def note(runs)
  bad = runs.count(&:error)
  bad.zero? ? "" : " (#{bad} of #{runs.size} runs failed)"
end

def ok_median(runs, field)
  values = runs.reject(&:error).map { |r| r[field] }.compact
  values.empty? ? nil : BenchStats.median(values)
end

puts "Linux #{`uname -r`.strip}, #{`nproc`.strip} CPUs, #{`#{ruby} -v`.strip}; Process::Handle.race_free? " +
     `#{ruby} -e 'print Process::Handle.race_free?'` + "; #{opts[:runs]} run(s) interleaved"

if opts[:only].include?("spawn")
  base = ok_median(results[["spawn", opts[:spawns], SPAWN[0][0]]], :wall_us)
  puts
  puts "### spawn+wait of /bin/true, #{opts[:spawns]} per run, one at a time (no scheduler)"
  puts
  puts "| contender | wall µs/spawn | CPU parent µs/spawn | CPU children µs/spawn | wall vs Process.spawn |"
  puts "|---|---:|---:|---:|---:|"
  SPAWN.each do |name, _|
    runs = results[["spawn", opts[:spawns], name]]
    m = ok_median(runs, :wall_us)
    ratio = base && m ? format("%.2fx", m / base) : "n/a"
    puts "| #{name}#{note(runs)} | #{cell(runs, :wall_us, "%.0f")} | #{cell(runs, :cpu_self_us, "%.1f")} | " \
         "#{cell(runs, :cpu_children_us, "%.0f")} | #{ratio} |"
  end
  puts
  puts "(CPU parent: the spawning process, user + sys; children: /bin/true's, as reaped; ratio: wall over Process.spawn's, lower is faster)"
end

if opts[:only].include?("wait")
  puts
  puts "### N concurrent children (#{SLEEP} 0.5), waited for concurrently"
  puts
  puts "| N | contender | wall s | spawn loop s | exit→resume p50 ms | drain ms | peak extra threads | peak ΔRSS KiB | ΔRSS KiB/child | CPU parent µs/child |"
  puts "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  WAIT_N.each do |n|
    WAIT.each do |name, _|
      runs = results[["wait", n, name]]
      per = ->(f) { runs.reject(&:error).empty? ? "n/a" : format("%.1f", ok_median(runs, f) / n) }
      puts "| #{n} | #{name}#{note(runs)} | #{cell(runs, :wall, "%.3f")} | #{cell(runs, :spawn, "%.3f")} | " \
           "#{cell(runs, :lat_p50_ms, "%.2f")} | #{cell(runs, :drain_ms, "%.2f")} | #{cell(runs, :threads, "%.0f")} | " \
           "#{cell(runs, :rss_kib, "%.0f")} | #{per.call(:rss_kib)} | #{cell(runs, :cpu_self_us, "%.0f")} |"
    end
  end
  puts
  puts "(exit→resume: waiter resumed - spawned - 0.5 s, median over the children exiting after the spawn loop; drain: " \
       "all waits done - (last spawn + 0.5 s); both include sleep(1)'s start-up. ΔRSS: VmHWM - VmRSS before the spawns)"
end

if opts[:only].include?("churn")
  puts
  puts "### Supervisor churn: 200 workers (sleep 0.05–0.3 s), 2 random SIGTERMs / 10 ms, rogue Process.wait(-1) thread, " \
       "#{opts[:churn_seconds]} s"
  puts
  puts "| workers | spawned | kills | kills at a reaped worker | misdirected | ESRCH | statuses lost | exits by TERM seen | CPU parent µs/worker |"
  puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  CHURN.each do |name, _|
    runs = results[["churn", 200, name]]
    puts "| #{name}#{note(runs)} | #{cell(runs, :spawned, "%.0f")} | #{cell(runs, :kills, "%.0f")} | " \
         "#{cell(runs, :stale, "%.0f")} | #{cell(runs, :misdirected, "%.0f")} | #{cell(runs, :esrch, "%.0f")} | " \
         "#{cell(runs, :lost, "%.0f")} | #{cell(runs, :termed, "%.0f")} | #{cell(runs, :cpu_self_us, "%.0f")} |"
  end
  puts
  puts "(kills at a reaped worker: aimed at a worker the rogue had reaped; misdirected: of those, pids: probes " \
       "(signal 0) that succeeded (pid reused), handles: kills through the pidfd that did not raise ESRCH; statuses " \
       "lost: the supervisor's wait got ECHILD)"
end

fields = %i[wall_us cpu_self_us cpu_children_us wall spawn lat_p50_ms drain_ms threads rss_kib rss_end_kib
            spawned kills stale misdirected esrch lost termed]
path = BenchStats.write_csv("process.csv", "workload,n,contender,run,#{fields.join(",")},error",
                            keys, results) do |r|
  [*fields.map { |f| r.values&.[](f) }, r.error&.lines&.first&.chomp]
end
puts
puts "runs: #{path}"
BenchStats.print_failures(results, keys)
