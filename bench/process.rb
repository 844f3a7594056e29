# frozen_string_literal: true
#
# Process::Handle (children held by a pidfd) against pids, with and without
# IO::Uring::Scheduler (#process_open adopts the handles its fibers create,
# #process_wait waits with IORING_OP_WAITID).  Three workloads:
#
#   spawn   spawn+wait throughput: 500 x /bin/true per run, one at a time,
#           no scheduler.  Process.spawn + Process.wait against
#           Process::Handle.spawn + #wait + #close, and the C floor
#           (bench/c/spawn_wait.c: vfork + waitpid, clone(CLONE_VM |
#           CLONE_VFORK | CLONE_PIDFD) + waitid(P_PIDFD), fork + waitpid).
#           CRuby forks instead of vforking when it runs as root
#           (has_privilege()), and Process::Handle.spawn then clones
#           without CLONE_VM | CLONE_VFORK: run as root, this script runs
#           the Ruby contenders both as root and as uid/gid 65534 (setpriv),
#           which takes the vfork paths.  Per spawn+wait: wall µs, CPU µs
#           of the parent (CLOCK_PROCESS_CPUTIME_ID) and of the reaped
#           children (Process.times cutime + cstime; getrusage in C).
#   wait    N = 1, 100, 1,000 concurrent children, waited for concurrently:
#             handle  under IO::Uring::Scheduler, a fiber per child doing
#                     Process::Handle.spawn + #wait (adopted: WAITID on the
#                     handle's pidfd)
#             pid     the same with Process.spawn + Process.wait2(pid) (the
#                     scheduler's #process_wait(pid): a pidfd opened per
#                     wait, then WAITID)
#             detach  no scheduler: Process.spawn + Process.detach(pid) (a
#                     thread per child), joined with #value in spawn order
#             handle-seq  for reference: under the scheduler, one fiber
#                     spawns N handles and #waits for each in turn (WAITID
#                     one at a time): the memory of N children and
#                     handles, without a fiber or thread per wait
#           The child is `spawn_wait until` (the C baseline's binary): it
#           reads a CLOCK_MONOTONIC deadline from a pipe on stdin and exits
#           at that instant.  Once all N are spawned, the parent writes
#           deadline = now + 0.5 s for each: so all N are alive and waited
#           for at once, however long spawning N takes (as root, a fork
#           per child of a growing parent: seconds for 1,000; a `sleep 0.5`
#           child would be long gone by then), and all exit at a known
#           instant.  Wall time (spawn loop + 0.5 s + the last resume);
#           exit->resume latency: (waiter resumed - deadline), median and
#           max over the children; peak extra threads (/proc/self/status
#           Threads, sampled every 10 spawns and every 50 ms while waiting,
#           minus the count before); peak RSS growth (VmHWM, reset through
#           /proc/self/clear_refs before the spawns, minus VmRSS then) in
#           KiB, and per child; the parent's CPU per child.  The /proc
#           reads are blocking (Fiber.blocking) and sampled every 50 ms:
#           through the scheduler they would start its worker thread.
#   churn   a supervisor (no scheduler) keeps up to 200 workers
#           (/usr/bin/sleep 0.05..0.3 s), spawning one whenever it has
#           fewer, reaps them with a non-blocking wait every 10 ms, and
#           sends SIGTERM to a random worker it believes alive every 5 ms,
#           for 3 s, while a rogue thread steals statuses with
#           Process.wait(-1, WNOHANG) every 0.5 ms.  (Keeping 200 such
#           workers takes ~1,150 spawns/s; where spawning is slower the
#           pool is smaller: the table gives its mean size.  The
#           supervisor calls Thread.pass after each spawn, else the rogue
#           hardly gets the GVL.)  pids: workers are pids; handles:
#           Process::Handle.  Counted: kills aimed at a worker the rogue
#           had already reaped (the pid may by then name another process);
#           "misdirected": of
#           those, the signals that reached some process (pids: probes that
#           succeeded, i.e. the pid had been reused; handles: kills through
#           the pidfd that did not raise ESRCH, which must be 0); statuses
#           the supervisor lost (its wait got ECHILD).
#           Safety: the rogue reaps under a Mutex that the supervisor holds
#           around "was it stolen?" + the kill, so SIGTERM only ever goes
#           to a child of this run that is not reaped yet.  With pids, a
#           kill at a stolen pid is sent as signal 0 (a harmless probe):
#           its success counts as a signal that would have hit another
#           process.  With handles the real SIGTERM goes through the pidfd.
#           The workers are sleep(1): nothing else is ever signalled.
#
#   build/ruby/bin/ruby bench/process.rb [--runs N] [--only spawn,wait,churn]
#       [--spawns N] [--wait-n 1,100,1000] [--churn-seconds S] [--unprivileged]
#
# --unprivileged runs the wait and churn children as uid/gid 65534 instead
# (setpriv; needs root).
# The C baseline is built by this script when /tmp/spawn_wait is missing or
# older than its source: gcc -O2 bench/c/spawn_wait.c -o /tmp/spawn_wait.
# Every run (default 5) is a fresh child process (the C baseline runs as
# itself), interleaved: run 1 of every workload and contender, then run 2,
# ...  Tables give the median [min–max] over the runs.  Every run goes to
# bench/results/process.csv.
#
#   ruby bench/process.rb --child WORKLOAD MODE ARG...   (one run: prints
#                                                        "result k=v ...")
require "optparse"
require_relative "lib/stats"

SLEEP = "/usr/bin/sleep"
TRUE_BIN = "/bin/true"
BASELINE = "/tmp/spawn_wait"
UNPRIVILEGED = %w[setpriv --reuid=65534 --regid=65534 --clear-groups].freeze

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
def cpu_now = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

def children_cpu
  t = Process.times
  t.cutime + t.cstime
end

# Blocking, also in a fiber: through the scheduler a regular file's open and
# read would go to its worker pool and io-wq, i.e. start threads.
def proc_status
  Fiber.blocking do
    File.read("/proc/self/status").scan(/^(VmRSS|VmHWM|Threads):\s+(\d+)/).to_h { |k, v| [k.to_sym, v.to_i] }
  end
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
  report(wall_us: t * 1e6 / n, cpu_self_us: c * 1e6 / n, cpu_children_us: k * 1e6 / n, euid: Process.euid)
end

def child_wait(mode, n)
  if mode == "detach"
    Process.detach(Process.spawn([TRUE_BIN, "true"])).value
  else
    require "io/uring"
    Warning[:experimental] = false
    Process::Handle.spawn([TRUE_BIN, "true"]).tap(&:wait).close
  end
  gate, release = IO.pipe
  cmd = [[BASELINE, "spawn_wait"], "until", { in: gate }]
  GC.start
  File.write("/proc/self/clear_refs", "5")  # VmHWM := VmRSS
  base = proc_status
  peak_threads = base[:Threads]
  sample = -> { t = proc_status[:Threads]; peak_threads = t if t > peak_threads }
  resumed = Array.new(n)
  failed = 0
  adopted = 0
  deadline = nil
  t0 = c0 = k0 = t_spawned = t_done = nil
  open_gate = lambda do
    t_spawned = now
    gate.close
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) + 500_000_000
    release.write([deadline].pack("q") * n)
    release.close
  end

  if mode == "detach"
    t0, c0, k0 = now, cpu_now, children_cpu
    threads = Array.new(n) do |i|
      th = Process.detach(Process.spawn(*cmd))
      sample.call if i % 10 == 9 || i == n - 1
      th
    end
    open_gate.call
    sample.call
    threads.each_with_index do |th, i|
      failed += 1 unless th.value.success?
      resumed[i] = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
    end
    t_done = now
  else
    scheduler = IO::Uring::Scheduler.new
    Fiber.set_scheduler(scheduler)
    Fiber.schedule do
      done = Thread::Queue.new
      waiting = true
      t0, c0, k0 = now, cpu_now, children_cpu
      if mode == "handle-seq"
        handles = Array.new(n) do |i|
          h = Process::Handle.spawn(*cmd)
          adopted += 1 if h.adopted?
          sample.call if i % 10 == 9 || i == n - 1
          h
        end
      end
      (mode == "handle-seq" ? 0 : n).times do |i|
        Fiber.schedule do
          if mode == "handle"
            h = Process::Handle.spawn(*cmd)
            adopted += 1 if h.adopted?
            status = h.wait
            resumed[i] = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
            h.close
          else
            _, status = Process.wait2(Process.spawn(*cmd))
            resumed[i] = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
          end
          failed += 1 unless status.success?
          done << i
        end
        sample.call if i % 10 == 9 || i == n - 1
      end
      open_gate.call
      Fiber.schedule { (sample.call; sleep 0.05) while waiting }
      if mode == "handle-seq"
        handles.each_with_index do |h, i|
          failed += 1 unless h.wait.success?
          resumed[i] = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
          h.close
        end
      else
        n.times { done.pop }
      end
      t_done = now
      waiting = false
    end
    Fiber.set_scheduler(nil)
  end
  c, k = cpu_now - c0, children_cpu - k0
  after = proc_status
  lat = resumed.map { |r| (r - deadline) / 1e6 }
  report(wall: t_done - t0, spawn: t_spawned - t0, lat_p50_ms: BenchStats.median(lat), lat_max_ms: lat.max,
         threads: peak_threads - base[:Threads],
         rss_kib: after[:VmHWM] - base[:VmRSS], rss_end_kib: after[:VmRSS] - base[:VmRSS],
         cpu_self_us: c * 1e6 / n, cpu_children_us: k * 1e6 / n,
         failed: failed, adopted: adopted, euid: Process.euid)
end

Worker = Struct.new(:pid, :handle)

def child_churn(mode, seconds, size)
  reap_every = 0.01
  kill_every = 0.005
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
  next_reap = next_kill = t0
  passes = live_sum = 0
  while (t = now) < deadline
    if t >= next_reap
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
      passes += 1
      live_sum += live.size
      next_reap = t + reap_every
    end
    if t >= next_kill && !live.empty?
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
      next_kill = [next_kill + kill_every, t].max
    end
    if live.size < size
      live << start.call
      c[:spawned] += 1
      Thread.pass  # the rogue, when it waits for the GVL
    else
      sleep 0.001
    end
  end
  t, cpu, k = now - t0, cpu_now - c0, children_cpu - k0
  stop = true
  rogue.join
  # Let the rest finish (no more kills), untimed.
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
  report(wall: t, spawned: c[:spawned], live: live_sum.fdiv(passes), kills: c[:kills], stale: c[:stale], misdirected: c[:misdirected],
         esrch: c[:esrch], lost: c[:lost], reaped: c[:reaped], termed: c[:termed], stolen: stolen.size,
         cpu_self_us: cpu * 1e6 / c[:spawned], cpu_children_us: k * 1e6 / c[:spawned], euid: Process.euid)
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
opts = { runs: 5, only: %w[spawn wait churn], spawns: 500, wait_n: [1, 100, 1000], churn_seconds: 3.0,
         unprivileged: false }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--only LIST", Array, "spawn,wait,churn") { |v| opts[:only] = v }
  o.on("--spawns N", Integer) { |v| opts[:spawns] = v }
  o.on("--wait-n LIST", Array) { |v| opts[:wait_n] = v.map { |n| Integer(n) } }
  o.on("--churn-seconds S", Float) { |v| opts[:churn_seconds] = v }
  o.on("--unprivileged", "run the wait and churn children as uid 65534") { opts[:unprivileged] = true }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1

ruby = File.join(top, "build/ruby/bin/ruby")
source = File.join(__dir__, "c/spawn_wait.c")
unless File.executable?(BASELINE) && File.mtime(BASELINE) > File.mtime(source)
  system("gcc", "-O2", source, "-o", BASELINE) or abort "bench: gcc failed"
end
root = Process.euid.zero?
can_drop = root && system(*UNPRIVILEGED, ruby, "-e", "exit 0", err: File::NULL)
warn "bench: root, but setpriv cannot run ruby as uid 65534: no unprivileged rows" if root && !can_drop
abort "bench: --unprivileged needs root and setpriv" if opts[:unprivileged] && !can_drop

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

def measure_c(mode, n)
  out = IO.popen([BASELINE, mode, n.to_s], err: %i[child out], &:read)
  return Run.new(nil, "#{$?.inspect}: #{out}") unless $?.success?
  _, _, wall, self_us, children_us = out.split
  Run.new({ wall_us: Float(wall), cpu_self_us: Float(self_us), cpu_children_us: Float(children_us) }, nil)
rescue ArgumentError => e
  Run.new(nil, "#{e.message}: #{out}")
end

# [name, mode, unprivileged?, counterpart for the ratio]
as = root ? " (root: fork)" : ""
SPAWN = [
  ["Process.spawn + Process.wait#{as}", "pid", false, nil],
  ["Process::Handle.spawn + #wait#{root ? " (root: clone, no CLONE_VM)" : ""}", "handle", false, 0],
]
if can_drop
  SPAWN << ["Process.spawn + Process.wait (uid 65534: vfork)", "pid", true, nil]
  SPAWN << ["Process::Handle.spawn + #wait (uid 65534: clone CLONE_VM\\|CLONE_VFORK)", "handle", true, 2]
end
c0 = SPAWN.size
SPAWN << ["C vfork + waitpid", "C:vfork", false, nil]
SPAWN << ["C clone(CLONE_VM\\|CLONE_VFORK\\|CLONE_PIDFD) + waitid(P_PIDFD)", "C:pidfd", false, c0]
SPAWN << ["C fork + waitpid", "C:fork", false, c0]
SPAWN.freeze
WAIT = [
  ["handle + WAITID (fibers)", "handle"],
  ["pid, Process.wait2 (fibers)", "pid"],
  ["Process.detach (thread per wait)", "detach"],
  ["handles, one fiber: #wait each in turn", "handle-seq"],
].freeze
CHURN = [["pids", "pid"], ["handles", "handle"]].freeze
drop = ->(unprivileged) { unprivileged ? UNPRIVILEGED : [] }

keys = []
keys.concat(SPAWN.map { |name, *| ["spawn", opts[:spawns], name] }) if opts[:only].include?("spawn")
keys.concat(opts[:wait_n].flat_map { |n| WAIT.map { |name, _| ["wait", n, name] } }) if opts[:only].include?("wait")
keys.concat(CHURN.map { |name, _| ["churn", 200, name] }) if opts[:only].include?("churn")

started = now
results = BenchStats.interleave(opts[:runs], keys) do |key|
  case key
  in ["spawn", n, name]
    _, mode, unprivileged, _ = SPAWN.assoc(name)
    if mode.start_with?("C:")
      measure_c(mode.delete_prefix("C:"), n)
    else
      measure([*drop.call(unprivileged), ruby, __FILE__, "--child", "spawn", mode, n.to_s], 120)
    end
  in ["wait", n, name]
    measure([*drop.call(opts[:unprivileged]), ruby, __FILE__, "--child", "wait", WAIT.assoc(name)[1], n.to_s], 120)
  in ["churn", n, name]
    measure([*drop.call(opts[:unprivileged]), ruby, __FILE__, "--child", "churn", CHURN.assoc(name)[1],
             opts[:churn_seconds].to_s, n.to_s], opts[:churn_seconds] + 60)
  end
end

def cell(runs, field, fmt)
  values = runs.reject(&:error).map { |r| r[field] }.compact
  return "n/a" if values.empty?
  m = BenchStats.median(values)
  return format(fmt, m) if values.min == values.max
  "#{format(fmt, m)} [#{format(fmt, values.min)}–#{format(fmt, values.max)}]"
end

def med(runs, field)
  values = runs.reject(&:error).map { |r| r[field] }.compact
  values.empty? ? nil : BenchStats.median(values)
end

def note(runs)
  bad = runs.count(&:error)
  bad.zero? ? "" : " (#{bad} of #{runs.size} runs failed)"
end

who = opts[:unprivileged] ? "uid 65534" : "uid #{Process.euid}"
puts "Linux #{`uname -r`.strip}, #{`nproc`.strip} CPUs, pid_max #{File.read("/proc/sys/kernel/pid_max").strip}, " \
     "#{`#{ruby} -v`.strip}, Process::Handle.race_free? #{`#{ruby} -e 'print Process::Handle.race_free?'`}; " \
     "#{opts[:runs]} run(s) interleaved, #{format("%.0f", now - started)} s"

if opts[:only].include?("spawn")
  puts
  puts "### spawn+wait of /bin/true, #{opts[:spawns]} per run, one at a time (no scheduler)"
  puts
  puts "| contender | wall µs/spawn | CPU parent µs/spawn | CPU children µs/spawn | vs counterpart: wall, CPU |"
  puts "|---|---:|---:|---:|---:|"
  SPAWN.each do |name, _, _, counterpart|
    runs = results[["spawn", opts[:spawns], name]]
    ratio = "n/a"
    if counterpart
      other = results[["spawn", opts[:spawns], SPAWN[counterpart][0]]]
      cpu = ->(rs) { rs.reject(&:error).map { |r| r[:cpu_self_us] + r[:cpu_children_us] } }
      if med(runs, :wall_us) && med(other, :wall_us)
        ratio = format("%.2fx, %.2fx", med(runs, :wall_us) / med(other, :wall_us),
                       BenchStats.median(cpu.call(runs)) / BenchStats.median(cpu.call(other)))
      end
    end
    puts "| #{name}#{note(runs)} | #{cell(runs, :wall_us, "%.0f")} | #{cell(runs, :cpu_self_us, "%.0f")} | " \
         "#{cell(runs, :cpu_children_us, "%.0f")} | #{ratio} |"
  end
  puts
  puts "(CPU parent: the spawning process, user + sys; children: /bin/true's, from reaping (they include the " \
       "child's work before exec); vs counterpart: median wall and median parent+children CPU over the pid " \
       "contender's (C: over vfork's); below 1.00x is cheaper)"
end

if opts[:only].include?("wait")
  puts
  puts "### N concurrent children (exit together 0.5 s after the last spawn), waited for concurrently, #{who}"
  puts
  puts "| N | contender | wall s | spawn loop s | exit→resume p50 ms | exit→resume max ms | peak extra threads | " \
       "peak ΔRSS KiB | KiB/child | CPU parent µs/child |"
  puts "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  opts[:wait_n].each do |n|
    WAIT.each do |name, _|
      runs = results[["wait", n, name]]
      per = med(runs, :rss_kib) ? format("%.1f", med(runs, :rss_kib) / n) : "n/a"
      puts "| #{n} | #{name}#{note(runs)} | #{cell(runs, :wall, "%.3f")} | #{cell(runs, :spawn, "%.3f")} | " \
           "#{cell(runs, :lat_p50_ms, "%.2f")} | #{cell(runs, :lat_max_ms, "%.2f")} | #{cell(runs, :threads, "%.0f")} | " \
           "#{cell(runs, :rss_kib, "%.0f")} | #{per} | #{cell(runs, :cpu_self_us, "%.0f")} |"
    end
  end
  puts
  puts "(exit→resume: waiter resumed - the common exit deadline; detach: #value joined in spawn order. " \
       "Peak ΔRSS: VmHWM - VmRSS before the spawns. CPU parent: spawn + wait, per child)"
end

if opts[:only].include?("churn")
  puts
  puts "### Supervisor churn: up to 200 workers (sleep 0.05–0.3 s), a SIGTERM to a random one every 5 ms, " \
       "reaping every 10 ms, rogue Process.wait(-1) thread, #{opts[:churn_seconds]} s, #{who}"
  puts
  puts "| workers | spawned | mean live | kills | kills at a reaped worker | misdirected | ESRCH | statuses lost | " \
       "exits by TERM seen | CPU parent µs/worker |"
  puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  CHURN.each do |name, _|
    runs = results[["churn", 200, name]]
    puts "| #{name}#{note(runs)} | #{cell(runs, :spawned, "%.0f")} | #{cell(runs, :live, "%.0f")} | " \
         "#{cell(runs, :kills, "%.0f")} | " \
         "#{cell(runs, :stale, "%.0f")} | #{cell(runs, :misdirected, "%.0f")} | #{cell(runs, :esrch, "%.0f")} | " \
         "#{cell(runs, :lost, "%.0f")} | #{cell(runs, :termed, "%.0f")} | #{cell(runs, :cpu_self_us, "%.0f")} |"
  end
  puts
  puts "(kills at a reaped worker: aimed at a worker the rogue had reaped; misdirected: of those, pids: " \
       "probes (signal 0, sent instead of TERM) that succeeded, i.e. the pid named a process again; handles: " \
       "SIGTERMs through the pidfd that did not raise ESRCH; statuses lost: the supervisor's wait got ECHILD)"
end

fields = %i[wall_us cpu_self_us cpu_children_us wall spawn lat_p50_ms lat_max_ms threads rss_kib rss_end_kib
            spawned live kills stale misdirected esrch lost termed euid]
path = BenchStats.write_csv("process.csv", "workload,n,contender,run,#{fields.join(",")},error",
                            keys, results) do |r|
  [*fields.map { |f| r.values&.[](f) }, r.error&.lines&.first&.chomp]
end
puts
puts "runs: #{path}"
BenchStats.print_failures(results, keys)
