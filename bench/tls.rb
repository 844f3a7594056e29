# frozen_string_literal: true
#
# OpenSSL::SSL::SSLSocket under fiber schedulers: TLS 1.3 with a fixed
# cipher (TLS_AES_128_GCM_SHA256, P-256 certificate), both ends in one
# process, over a UNIX socket pair and TCP loopback.  Workloads:
#
#   bulk  BYTES (default 512 MiB) one way: 64 KiB #syswrite (the rest of a
#         partial write written again), 64 KiB #sysread; MB/s and the
#         process's CPU per MB (TLS_BENCH_WRITE_SIZE=16384: one record per
#         call)
#   rr    PAIRS (default 50) connections, each COUNT (default 1,000)
#         1 KiB request/response round trips, all pairs at once; wall s
#         and CPU µs per round trip
#   hs    COUNT (default 200) fresh TCP connections with a full handshake
#         (no resumption), one after the other; handshakes/s
#
# Contenders (each run a fresh process; runs interleaved, median and range):
#   threads         stock ruby, no scheduler: a thread per end
#   test-scheduler  stock ruby, CRuby's test scheduler (test/fiber/scheduler.rb)
#   async-epoll     stock ruby, Async + io-event, EPoll selector
#   async-uring     stock ruby, Async + io-event, URing selector
#   uring-fd        patched ruby, IO::Uring::Scheduler,
#                   RUBY_OPENSSL_SCHEDULER_TRANSPORT=0 (libssl on the socket)
#   uring           patched ruby, IO::Uring::Scheduler, the scheduler
#                   transport (SSLSocket#transport == :scheduler)
#   C               bench/c/tls_baseline.c: libssl on blocking sockets, a
#                   thread per end (the floor)
#
# --syscalls counts, with strace -f -c, the socket reads and writes
# (read, write, recvfrom, sendto, recvmsg, sendmsg) and io_uring_enter of
# one bulk run of 64 MiB per contender, minus those of a run of 0 bytes
# (startup, handshake).
#
#   build/ruby/bin/ruby bench/tls.rb [--runs N] [--only bulk,rr,hs]
#       [--bytes N] [--pairs N] [--count N] [--hs N] [--syscalls]
#       [--contenders a,b,...]
#
# Needs `make stock` and bench/setup.sh (async, io-event) for the stock
# contenders; missing ones are reported and skipped.
require "rbconfig"
require "json"
require "open3"
require_relative "lib/stats"

TOP = File.expand_path("..", __dir__)
PATCHED = RbConfig.ruby
STOCK = File.join(TOP, "build/stock/ruby/bin/ruby")
TEST_SCHEDULER = File.join(TOP, "build/stock/src/test/fiber/scheduler.rb")
BASELINE = "/tmp/tls_baseline"
# bulk: the size of each #syswrite (libssl makes records of 16 KiB: stock
# sends one per call and returns its size, the transport sends those that
# fit its buffer together)
WRITE_SIZE = Integer(ENV.fetch("TLS_BENCH_WRITE_SIZE", 65536))

# ---- the child: one run of one contender ----

def child(contender, workload, net, n, count)
  require "openssl"
  require "socket"
  case contender
  when "test-scheduler" then require TEST_SCHEDULER
  when /\Aasync/ then require "async"
  when /\Auring/ then require "io/uring"
  end

  key = OpenSSL::PKey::EC.generate("prime256v1")
  cert = OpenSSL::X509::Certificate.new
  cert.version = 2
  cert.serial = 1
  cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=localhost")
  cert.public_key = key
  cert.not_before = Time.now - 3600
  cert.not_after = Time.now + 86400
  cert.sign(key, "SHA256")
  contexts = [true, false].map do |server|
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.min_version = ctx.max_version = OpenSSL::SSL::TLS1_3_VERSION
    ctx.ciphersuites = "TLS_AES_128_GCM_SHA256"
    if server
      ctx.key = key
      ctx.cert = cert
    end
    ctx
  end
  server_ctx, client_ctx = contexts
  listener = TCPServer.new("127.0.0.1", 0) if net == "tcp"
  port = listener&.local_address&.ip_port

  socket_pair = lambda do
    if net == "unix"
      UNIXSocket.pair
    else
      a = TCPSocket.new("127.0.0.1", port)
      [a, listener.accept]
    end
  end
  transports = []
  # One end: handshake, the workload, then close_notify both ways (a
  # socket closed with unread session tickets would reset the connection).
  run_end = lambda do |io, server, pair_work|
    ssl = OpenSSL::SSL::SSLSocket.new(io, server ? server_ctx : client_ctx)
    ssl.sync_close = true
    server ? ssl.accept : ssl.connect
    transports << ssl.transport if ssl.respond_to?(:transport)
    pair_work&.call(ssl, server)
    ssl.__send__(:stop) # close_notify (private: #close would close the socket)
    buf = String.new
    loop { ssl.sysread(4096, buf) } rescue nil
    ssl.io.close
  end
  msg = "r" * 1024
  work = case workload
         when "bulk"
           lambda do |ssl, server|
             moved = 0
             if server
               buf = String.new(capacity: 65536)
               moved += ssl.sysread(65536, buf).bytesize while moved < n
             else
               chunk = "x" * WRITE_SIZE
               while moved < n
                 moved += ssl.syswrite(n - moved >= WRITE_SIZE ? chunk : chunk.byteslice(0, n - moved))
               end
             end
           end
         when "rr"
           lambda do |ssl, server|
             buf = String.new(capacity: 1024)
             count.times do
               if server
                 got = 0
                 got += ssl.sysread(1024 - got, buf).bytesize while got < 1024
                 ssl.syswrite(msg)
               else
                 ssl.syswrite(msg)
                 got = 0
                 got += ssl.sysread(1024 - got, buf).bytesize while got < 1024
               end
             end
           end
         end
  pairs = workload == "rr" ? n : 1
  jobs = if workload == "hs"
           # one connection after another, each both ends at once
           [lambda do |spawn|
             n.times do
               a, b = socket_pair.call
               spawn.call([-> { run_end.call(b, true, nil) }, -> { run_end.call(a, false, nil) }])
             end
           end]
         end

  ios = workload == "hs" ? [] : Array.new(pairs) { socket_pair.call }
  ends = ios.flat_map { |a, b| [-> { run_end.call(b, true, work) }, -> { run_end.call(a, false, work) }] }

  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  c0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
  case contender
  when "threads"
    run_all = ->(procs) { procs.map { |pr| Thread.new(&pr) }.each(&:join) }
    jobs ? jobs.first.call(run_all) : run_all.call(ends)
  when "test-scheduler", /\Auring/
    klass = contender == "test-scheduler" ? Scheduler : IO::Uring::Scheduler
    Thread.new do
      Fiber.set_scheduler(klass.new)
      if jobs
        # the test scheduler cannot nest Fiber.schedule: a driver fiber per
        # connection, started from the thread's root fiber, one at a time
        n.times do
          a, b = socket_pair.call
          done = 0
          Fiber.schedule { run_end.call(b, true, nil); done += 1 }
          Fiber.schedule { run_end.call(a, false, nil); done += 1 }
          Fiber.scheduler.run until done == 2
        end
      else
        ends.each { |pr| Fiber.schedule(&pr) }
      end
    end.join
  when /\Aasync/
    Sync do |task|
      spawn = ->(procs) { procs.map { |pr| task.async { pr.call } }.each(&:wait) }
      jobs ? jobs.first.call(spawn) : spawn.call(ends)
    end
  end
  wall = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
  cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - c0
  puts JSON.generate(wall: wall, cpu: cpu, transports: transports.uniq)
end

if ARGV.first == "--child"
  child(ARGV[1], ARGV[2], ARGV[3], Integer(ARGV[4]), Integer(ARGV[5]))
  exit
end

# ---- the parent ----

Run = Struct.new(:wall, :cpu, :transports, :error)

opts = {runs: 5, only: %w[bulk rr hs], bytes: 512 << 20, pairs: 50, count: 1000, hs: 200,
        syscalls: false, contenders: %w[threads test-scheduler async-epoll async-uring uring-fd uring C]}
args = ARGV.dup
until args.empty?
  case (a = args.shift)
  when "--runs" then opts[:runs] = Integer(args.shift)
  when "--only" then opts[:only] = args.shift.split(",")
  when "--bytes" then opts[:bytes] = Integer(args.shift)
  when "--pairs" then opts[:pairs] = Integer(args.shift)
  when "--count" then opts[:count] = Integer(args.shift)
  when "--hs" then opts[:hs] = Integer(args.shift)
  when "--syscalls" then opts[:syscalls] = true
  when "--contenders" then opts[:contenders] = args.shift.split(",")
  else abort "bench/tls.rb: unknown option #{a}"
  end
end

src = File.join(TOP, "bench/c/tls_baseline.c")
if opts[:contenders].include?("C") && (!File.exist?(BASELINE) || File.mtime(BASELINE) < File.mtime(src))
  system("gcc", "-O2", src, "-o", BASELINE, "-lssl", "-lcrypto", "-lpthread") or abort "cannot build #{BASELINE}"
end

def command(contender, workload, net, n, count)
  env = {}
  env["IO_EVENT_SELECTOR"] = "EPoll" if contender == "async-epoll"
  env["IO_EVENT_SELECTOR"] = "URing" if contender == "async-uring"
  env["RUBY_OPENSSL_SCHEDULER_TRANSPORT"] = "0" if contender == "uring-fd"
  case contender
  when "C"
    wl = {"bulk" => ["bulk", net, n.to_s], "rr" => ["rr", net, n.to_s, count.to_s], "hs" => ["hs", net, n.to_s]}[workload]
    [env, BASELINE, *wl]
  else
    ruby = contender.start_with?("uring") ? PATCHED : STOCK
    [env, ruby, __FILE__, "--child", contender, workload, net, n.to_s, count.to_s]
  end
end

def available?(contender)
  case contender
  when "C" then File.executable?(BASELINE)
  when "uring", "uring-fd" then system(PATCHED, "-rio/uring", "-e", "IO::Uring::Scheduler.new.close", err: File::NULL)
  when "test-scheduler", "threads" then File.executable?(STOCK) && (contender == "threads" || File.exist?(TEST_SCHEDULER))
  else File.executable?(STOCK) && system(STOCK, "-rasync", "-e", "", err: File::NULL)
  end
end

def run_once(contender, workload, net, n, count)
  out, err, status = Open3.capture3(*command(contender, workload, net, n, count))
  return Run.new(nil, nil, nil, "#{status}\n#{err}#{out}") unless status.success?
  if contender == "C"
    h = out.scan(/(\w+)=([\d.]+)/).to_h
    Run.new(h["wall"].to_f, h["cpu"].to_f, ["fd"], nil)
  else
    j = JSON.parse(out.lines.last)
    Run.new(j["wall"], j["cpu"], j["transports"], nil)
  end
rescue => e
  Run.new(nil, nil, nil, e.full_message)
end

contenders = opts[:contenders].select do |c|
  available?(c) or (warn "bench/tls.rb: #{c} is not available here: skipped"; false)
end

puts "# TLS 1.3 TLS_AES_128_GCM_SHA256 through fiber schedulers (#{opts[:runs]} interleaved runs, median and range)"
puts
puts "ruby: #{`#{PATCHED} -v`.strip}; stock: #{File.executable?(STOCK) ? `#{STOCK} -v`.strip : "none"}; #{`openssl version`.strip}"

keys = []
opts[:only].each do |workload|
  nets = workload == "hs" ? %w[tcp] : %w[unix tcp]
  nets.each { |net| contenders.each { |c| keys << [workload, net, c] } }
end
results = BenchStats.interleave(opts[:runs], keys) do |(workload, net, c)|
  n = {"bulk" => opts[:bytes], "rr" => opts[:pairs], "hs" => opts[:hs]}[workload]
  run_once(c, workload, net, n, opts[:count])
end

opts[:only].each do |workload|
  (workload == "hs" ? %w[tcp] : %w[unix tcp]).each do |net|
    puts
    case workload
    when "bulk"
      mb = opts[:bytes] / 1e6
      puts "## bulk #{opts[:bytes] >> 20} MiB, #{net.upcase}"
      puts
      puts "| contender | MB/s | range | CPU ms per 100 MB | range | transport | vs uring-fd |"
      puts "|---|---:|---:|---:|---:|---|---:|"
      base = BenchStats.median_of(results[["bulk", net, "uring-fd"]] || [], ->(r) { mb / r.wall })
      contenders.each do |c|
        runs = results[["bulk", net, c]]
        puts BenchStats.row(c, runs, [->(r) { mb / r.wall }, ->(r) { r.cpu * 1e3 / (mb / 100) }],
                            format: "%.0f", base: base, extra: ->(ok) { ok.flat_map(&:transports).uniq.join(",") })
      end
    when "rr"
      trips = opts[:pairs] * opts[:count]
      puts "## request/response, #{opts[:pairs]} pairs x #{opts[:count]} x 1 KiB, #{net.upcase}"
      puts
      puts "| contender | wall s | range | CPU µs per round trip | range | transport | vs uring-fd |"
      puts "|---|---:|---:|---:|---:|---|---:|"
      base = BenchStats.median_of(results[["rr", net, "uring-fd"]] || [], :wall)
      contenders.each do |c|
        runs = results[["rr", net, c]]
        puts BenchStats.row(c, runs, [:wall, ->(r) { r.cpu * 1e6 / trips }], format: ["%.2f", "%.1f"],
                            base: base, faster: :lower, extra: ->(ok) { ok.flat_map(&:transports).uniq.join(",") })
      end
    when "hs"
      puts "## handshakes, #{opts[:hs]} fresh TCP connections"
      puts
      puts "| contender | handshakes/s | range | CPU ms per handshake | range | transport | vs uring-fd |"
      puts "|---|---:|---:|---:|---:|---|---:|"
      base = BenchStats.median_of(results[["hs", net, "uring-fd"]] || [], ->(r) { opts[:hs] / r.wall })
      contenders.each do |c|
        runs = results[["hs", net, c]]
        puts BenchStats.row(c, runs, [->(r) { opts[:hs] / r.wall }, ->(r) { r.cpu * 1e3 / opts[:hs] }],
                            format: ["%.0f", "%.2f"], base: base, extra: ->(ok) { ok.flat_map(&:transports).uniq.join(",") })
      end
    end
  end
end
BenchStats.print_failures(results, keys)
path = BenchStats.write_csv("tls.csv", "workload,net,contender,run,wall_s,cpu_s,transports", keys, results) do |r|
  [r.wall, r.cpu, Array(r.transports).join(" ")]
end
puts
puts "(every run: #{path.sub(TOP + "/", "")})"

if opts[:syscalls]
  abort "bench/tls.rb: --syscalls needs strace" unless system("strace -V", out: File::NULL)
  puts
  puts "## socket syscalls for 64 MiB bulk (strace -f -c, minus a 0-byte run)"
  puts
  puts "| contender | net | socket reads | socket writes | io_uring_enter | reads+writes vs uring-fd |"
  puts "|---|---|---:|---:|---:|---:|"
  names = %w[read write recvfrom sendto recvmsg sendmsg io_uring_enter]
  %w[unix tcp].each do |net|
    counts = {}
    contenders.each do |c|
      per = [64 << 20, 0].map do |bytes|
        env, *cmd = command(c, "bulk", net, bytes, 1)
        _, err, _ = Open3.capture3(env, "strace", "-f", "-c", "-e", "trace=#{names.join(",")}", *cmd)
        err.lines.each_with_object(Hash.new(0)) do |l, h|
          f = l.split
          h[f.last] = f[3].to_i if f.size >= 5 && names.include?(f.last)
        end
      end
      d = names.to_h { |nm| [nm, per[0][nm] - per[1][nm]] }
      counts[c] = [d["read"] + d["recvfrom"] + d["recvmsg"], d["write"] + d["sendto"] + d["sendmsg"], d["io_uring_enter"]]
    end
    base = counts["uring-fd"]&.then { |r, w, _| r + w }
    counts.each do |c, (r, w, e)|
      ratio = base && base > 0 ? format("%.2f%%", 100.0 * (r + w) / base) : "n/a"
      puts "| #{c} | #{net} | #{r} | #{w} | #{e} | #{ratio} |"
    end
  end
end
