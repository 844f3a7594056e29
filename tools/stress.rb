# Randomized stress of what the series touches, under IO::Uring::Scheduler
# and without a scheduler: IO.copy_stream between every kind of endpoint,
# IO#close racing readers, Fiber#raise/Thread#raise/Timeout during reads,
# writes, splices and waits, forks with operations in flight,
# Process::Handle, registered buffers, TLS.
#
#   ruby tools/stress.rb [--seconds N | --ops N] [--seed S] [--workers N]
#                        [--only KINDS] [--scheduler both|uring|none] [-v]
#   make stress [STRESS_SECONDS=N] [SEED=S]
#
# Every byte is checked (sha256 of what arrived against what was sent; for
# interrupted streams, that what arrived comes in order from the stream,
# nothing twice), descriptors are counted before and after, and a watchdog
# names the operation a worker is stuck in.  Workers draw their operations
# from Random.new(seed + worker): the same seed gives the same operations
# (with --ops, the same plan digest).  Exits non-zero on any failure.
require "socket"
require "digest"
require "timeout"
require "tmpdir"
require "optparse"
begin
  require "openssl"
rescue LoadError
end

begin
  require "io/uring"
  IO::Uring::Scheduler.new.close
  URING = true
rescue LoadError, SystemCallError => e
  URING = false
  warn "stress: no IO::Uring::Scheduler (#{e.class}): every worker runs without a scheduler"
end

options = {seconds: 120, ops: nil, seed: Random.new_seed % 1_000_000, workers: 4, verbose: false, stall: 60}
OptionParser.new do |o|
  o.on("--seconds N", Float) { |v| options[:seconds] = v }
  o.on("--ops N", Integer, "operations per worker (instead of --seconds)") { |v| options[:ops] = v }
  o.on("--seed N", Integer) { |v| options[:seed] = v }
  o.on("--workers N", Integer) { |v| options[:workers] = v }
  o.on("--stall N", Float, "seconds without progress before the watchdog fires") { |v| options[:stall] = v }
  o.on("--only KINDS", "comma-separated operations (copy,close_race,interrupt,fork,process,registered,tls)") do |v|
    options[:only] = v.split(",").map(&:to_sym)
  end
  o.on("--scheduler KIND", %w[both uring none], "workers under IO::Uring::Scheduler, without a scheduler, or both (alternating)") do |v|
    options[:scheduler] = v
  end
  o.on("-v", "--verbose") { options[:verbose] = true }
end.parse!

$stdout.sync = true
Warning[:experimental] = false
Thread.report_on_exception = false

def open_fds = Dir.children("/proc/self/fd").size - 1   # less the listing's own

# A unit of concurrent work: a fiber under a scheduler, else a thread.
class Task
  def initialize(scheduled, &block)
    @queue = Thread::Queue.new
    body = -> do
      @queue << [:ok, block.call]
    rescue Exception => e
      @queue << [:error, e]
    end
    @runner = scheduled ? Fiber.schedule(&body) : Thread.new(&body)
  end
  def value
    kind, value = @queue.pop
    raise value if kind == :error
    value
  end

  # Thread#raise, or Fiber#raise from a fiber of its own: Fiber#raise
  # transfers to the target, and the fiber calling it is resumed by no one.
  def interrupt(exception)
    if @runner.is_a?(Thread)
      @runner.raise(exception)
    elsif @runner.alive?
      target = @runner
      Fiber.schedule do
        target.raise(exception) if target.alive?
      rescue FiberError
      end
    end
  rescue ThreadError
  end
end

class Failure < StandardError; end

class Worker
  KINDS = %i[copy copy copy close_race interrupt interrupt fork process registered tls].freeze
  ENDPOINTS = %i[pipe file unix tcp].freeze

  attr_reader :id, :scheduled, :counts, :bytes, :lost, :interrupted_closes, :doing, :since, :thread, :plan, :failures

  def initialize(id, seed, scheduled, dir, verbose, only = nil)
    @id, @scheduled, @dir, @verbose = id, scheduled, dir, verbose
    @kinds = only ? KINDS & only : KINDS
    @rng = Random.new(seed + id)
    @counts = Hash.new(0)
    @bytes = 0
    @lost = 0
    @interrupted_closes = 0
    @plan = Digest::SHA256.new
    @failures = []
    @doing = "starting"
    @since = now
  end

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def start(deadline, ops)
    @thread = Thread.new do
      body = -> do
        n = 0
        while ops ? n < ops : now < deadline
          n += 1
          kind = @kinds.sample(random: @rng)
          # each operation draws from its own generator, so that what
          # tasks draw meanwhile cannot shift the next operations
          @op_rng = Random.new(@rng.rand(1 << 62))
          begin
            send(kind)
          rescue Failure => e
            @failures << "#{label}: #{e.message}"
            puts "FAIL #{label}: #{e.message}"
          end
          @counts[kind] += 1
        end
        @doing = "done"
      rescue Exception => e
        @failures << "#{label}: #{@doing}: #{e.class}: #{e.message}"
        puts "FAIL #{label}: #{@doing}: #{e.full_message(highlight: false)}"
      ensure
        @server&.close
      end
      if @scheduled
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        @fiber = Fiber.schedule(&body)
      else
        body.call
      end
    end
  end
  attr_reader :fiber

  def label = "worker #{@id} (#{@scheduled ? "IO::Uring::Scheduler" : "no scheduler"})"

  def note(text)
    @plan << text << "\n"
    @doing = text
    @since = now
    puts "#{label}: #{text}" if @verbose
  end

  def check(condition, message)
    raise Failure, "#{@doing}: #{message}" unless condition
  end

  def task(&block) = Task.new(@scheduled, &block)

  def tcp_pair
    @server ||= TCPServer.new("127.0.0.1", 0)
    client = TCPSocket.new("127.0.0.1", @server.addr[1])
    [@server.accept, client]
  end

  # [reader end, writer end] of an endpoint kind (a file is written first).
  def endpoint(kind, data = nil)
    case kind
    when :pipe then IO.pipe
    when :unix then UNIXSocket.pair
    when :tcp then tcp_pair
    when :file
      path = File.join(@dir, "w#{@id}-#{@op_rng.rand(1 << 30)}")
      File.binwrite(path, data || "")
      r = File.open(path, "rb")
      w = File.open(path, "ab")
      File.unlink(path)
      [r, w]
    end
  end

  # --- operations ---------------------------------------------------------

  # IO.copy_stream from one kind of endpoint to another, with a random
  # length and (from a file) offset; what arrives is what was meant to.
  def copy
    from, to = ENDPOINTS.sample(random: @op_rng), ENDPOINTS.sample(random: @op_rng)
    size = @op_rng.rand(1..(2 << 20))
    data = @op_rng.bytes(size)
    offset = from == :file && @op_rng.rand(2) == 0 ? @op_rng.rand(size) : nil
    length = @op_rng.rand(2) == 0 ? @op_rng.rand(0..(size - (offset || 0))) : nil
    note "copy #{from}->#{to} size=#{size} offset=#{offset.inspect} length=#{length.inspect}"
    src_r, src_w = endpoint(from, from == :file ? data : nil)
    dst_r, dst_w = endpoint(to)
    if from == :file
      src_w.close
      writer = nil
    else
      writer = task do
        src_w.write(data)
      rescue Errno::EPIPE, Errno::ECONNRESET
        # a copy of less than everything: the rest has no reader
      ensure
        src_w.close
      end
    end
    reader = if to != :file
               task do
                 dst_r.read
               ensure
                 dst_r.close
               end
             end
    copied = IO.copy_stream(src_r, dst_w, length, offset)
    dst_w.close
    src_r.close
    writer&.value
    received = reader ? reader.value : dst_r.read
    expected = data.byteslice(offset || 0, length || size)
    check copied == expected.bytesize, "copied #{copied}, expected #{expected.bytesize}"
    check Digest::SHA256.digest(received) == Digest::SHA256.digest(expected),
          "sha256 differs (#{received.bytesize} bytes arrived, #{expected.bytesize} sent)"
    @bytes += expected.bytesize
  ensure
    [src_r, src_w, dst_r, dst_w].each { |io| io&.close unless io&.closed? }
  end

  # A reader in a read while the descriptor is closed, from its own
  # thread or another: IOError (or the bytes that came first), no hang.
  def close_race
    kind = %i[pipe unix].sample(random: @op_rng)
    delay = @op_rng.rand * 0.005
    from_thread = @op_rng.rand(2) == 0
    write_first = @op_rng.rand(2) == 0
    note "close_race #{kind} delay=#{delay.round(4)} other_thread=#{from_thread} write_first=#{write_first}"
    r, w = endpoint(kind)
    w.write("x") if write_first
    reader = task do
      r.read(2)
    rescue IOError => e
      e
    end
    closer = -> { sleep delay; r.close }
    from_thread ? Thread.new(&closer).join : closer.call
    result = reader.value
    check result.is_a?(IOError) || result == "x" || result.nil?, "reader got #{result.inspect}"
  ensure
    [r, w].each { |io| io&.close unless io&.closed? }
  end

  # A stream between two tasks while one is interrupted (Fiber#raise or
  # Thread#raise, or Timeout) at random points of a read, a write, a
  # splice or a wait: what arrives comes from the stream in order, nothing
  # twice.  Bytes an interrupt took with it are counted, not failed: stock
  # Ruby loses them too.
  def interrupt
    target = %i[read write splice wait].sample(random: @op_rng)
    kind = %i[pipe unix].sample(random: @op_rng)
    how = %i[raise timeout].sample(random: @op_rng)
    size = @op_rng.rand((64 << 10)..(1 << 20)) & ~3
    times = @op_rng.rand(1..5)
    note "interrupt #{target} over #{kind} by #{how} x#{times} size=#{size}"
    stream = (0...(size / 4)).to_a.pack("N*")
    r, w = endpoint(kind)
    mid_r, mid_w = target == :splice ? IO.pipe : [nil, nil]
    chunks = []
    # The operation under attack; an interrupt ends it, the task goes on.
    guarded = ->(op, &block) do
      return block.call unless op == target
      how == :timeout ? Timeout.timeout(@op_rng.rand * 0.002, Interrupted, &block) : block.call
    rescue Interrupted
      :interrupted
    end
    writer = task do
      out = target == :splice ? mid_w : w
      pos = 0
      while pos < stream.bytesize
        n = [@op_rng.rand(1..65536), stream.bytesize - pos].min
        guarded.call(:write) { out.write(stream.byteslice(pos, n)) }
        pos += n        # never again: what an interrupt cut short is a gap
      end
    rescue Interrupted, Errno::EPIPE, IOError
    ensure
      close_all(out)
    end
    splicer = if target == :splice
                task do
                  loop { break if guarded.call(:splice) { IO.copy_stream(mid_r, w, 65536) } == 0 }
                rescue Interrupted, Errno::EPIPE, IOError
                ensure
                  close_all(mid_r, w)
                end
              end
    reader = task do
      loop do
        result = guarded.call(target == :wait ? :wait : :read) do
          r.wait_readable if target == :wait
          r.readpartial(65536)
        end
        chunks << result if result.is_a?(String)
      end
    rescue EOFError, Interrupted, IOError
    ensure
      close_all(r)
    end
    victim = {read: reader, wait: reader, write: writer, splice: splicer}[target]
    if how == :raise
      times.times do
        sleep @op_rng.rand * 0.002
        victim.interrupt(Interrupted.new)
      end
    end
    [writer, splicer, reader].compact.each { |t| t.value rescue nil }
    check_in_order(stream, chunks.join)
    got = chunks.sum(&:bytesize)
    # interrupted writes skip the rest of their chunk by design; what an
    # interrupted read or splice did not deliver is lost
    @lost += stream.bytesize - got unless target == :write
    @bytes += got
  ensure
    [r, w, mid_r, mid_w].each { |io| io&.close unless io&.closed? }
  end

  # Closes every IO of an interrupted task.  Under a scheduler IO#close is
  # a suspension point: an interrupt arriving there is raised from IO#close
  # once the descriptor is closed (as stock ruby raises a Thread#raise
  # pending during close(2)), and would skip the closes after it.
  def close_all(*ios)
    ios.each do |io|
      io.close
    rescue Interrupted
      @interrupted_closes += 1
      # recorded, not raised: the task's own value is not checked
      unless io.closed?
        @failures << "#{label}: #{@doing}: IO#close raised by an interrupt left the IO open"
        puts "FAIL #{@failures.last}"
      end
    end
  end

  # `received` is `stream` with pieces left out (what interrupts cut), in
  # order, nothing twice, nothing changed: matched greedily, re-anchoring
  # after a gap on the next 16 bytes (the stream of 4-byte counters never
  # repeats 16 bytes).
  def check_in_order(stream, received)
    p = q = 0
    while p < received.bytesize
      n = common_prefix(stream, q, received, p)
      if n > 0
        p += n
        q += n
        next
      end
      at = stream.index(received.byteslice(p, 16), q + 1)
      check at, "bytes #{p}.. of what arrived are not the stream's after #{q} " \
                "(#{received.bytesize} bytes arrived of #{stream.bytesize})"
      q = at
    end
  end

  def common_prefix(a, i, b, j)
    lo, hi = 0, [a.bytesize - i, b.bytesize - j].min
    while lo < hi                  # the longest equal prefix, by halves
      mid = (lo + hi + 1) / 2
      if a.byteslice(i, mid) == b.byteslice(j, mid) then lo = mid else hi = mid - 1 end
    end
    lo
  end

  class Interrupted < StandardError; end

  # fork(2) while another task waits in a read: the child starts clean
  # (patch 0002: no scheduler, or the one #process_fork gave it), can make
  # a new one on a thread, and exits cleanly; the parent's read completes.
  def fork
    note "fork"
    r, w = IO.pipe
    waiting = task { r.read(5) }
    pid = Process.fork do
      ok = Fiber.scheduler.nil? || (URING && Fiber.scheduler.is_a?(IO::Uring::Scheduler))
      if URING
        Thread.new do
          Fiber.set_scheduler(IO::Uring::Scheduler.new)
          Fiber.schedule { a, b = IO.pipe; b.write("c"); ok &&= a.read(1) == "c" }
        end.join
      end
      exit!(ok ? 0 : 1)
    end
    _, status = Process.wait2(pid)
    check status.success?, "child #{status.inspect}"
    w.write("hello")
    check waiting.value == "hello", "the parent's read after the fork"
  ensure
    [r, w].each { |io| io&.close unless io&.closed? }
  end

  # Process::Handle: spawn or fork, then kill, wait with a timeout, detach.
  def process
    how = %i[spawn fork missing].sample(random: @op_rng)
    action = %i[kill timeout wait detach].sample(random: @op_rng)
    note "process #{how} #{action}"
    handle = case how
             when :spawn then Process::Handle.spawn("sleep", "0.0#{@op_rng.rand(1..5)}")
             when :fork then Process::Handle.fork { sleep 0.001; exit!(3) }
             else
               begin
                 Process::Handle.spawn("/nonexistent/#{@op_rng.rand(1000)}")
               rescue Errno::ENOENT
                 return
               end
             end
    case action
    when :kill
      begin
        handle.kill(:KILL)
      rescue Errno::ESRCH
      end
    when :timeout then handle.wait(@op_rng.rand * 0.01)
    when :detach then handle.detach; return
    end
    status = handle.wait
    check status.is_a?(Process::Status), "wait gave #{status.inspect}"
  ensure
    handle.close if handle && !handle.detached?
  end

  # A self-signed EC certificate for the tls operation, made once.
  def self.tls_credentials
    @tls_credentials ||= begin
      key = OpenSSL::PKey::EC.generate("prime256v1")
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = 1
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=stress")
      cert.public_key = key
      cert.not_before = Time.now - 3600
      cert.not_after = Time.now + 86400
      cert.sign(key, "SHA256")
      [key, cert]
    end
  end

  # TLS over a UNIX or TCP socket pair: a handshake, then random bytes one
  # way in random writes; under a scheduler the bytes move through its
  # hooks (patch 0014's transport), and what arrives is what was sent.
  def tls
    return copy unless defined?(OpenSSL::SSL)
    kind = %i[unix tcp].sample(random: @op_rng)
    size = @op_rng.rand(1..(1 << 20))
    data = @op_rng.bytes(size)
    writes = Array.new(8) { @op_rng.rand(1..65536) }
    note "tls #{kind} size=#{size}"
    a, b = endpoint(kind)
    key, cert = Worker.tls_credentials
    server_ctx = OpenSSL::SSL::SSLContext.new
    server_ctx.key, server_ctx.cert = key, cert
    server = OpenSSL::SSL::SSLSocket.new(a, server_ctx)
    client = OpenSSL::SSL::SSLSocket.new(b, OpenSSL::SSL::SSLContext.new)
    # the receiver reads the known size: SSLSocket#close gives up its
    # close_notify when the socket is full (stock ruby/openssl)
    receiver = task do
      server.accept
      server.read(size) || ""
    end
    client.connect
    pos = 0
    i = 0
    while pos < size
      n = [writes[i % writes.size], size - pos].min
      client.write(data.byteslice(pos, n))
      pos += n
      i += 1
    end
    received = receiver.value
    check Digest::SHA256.digest(received) == Digest::SHA256.digest(data),
          "sha256 differs (#{received.bytesize} bytes arrived, #{size} sent)"
    @bytes += size
  ensure
    [client, server].each { |s| s&.close rescue nil }
    [a, b].each { |io| io&.close unless io&.closed? }
  end

  # Reads into slices of a registered buffer (IO::Uring::Scheduler only).
  def registered
    return copy unless @scheduled
    size = @op_rng.rand(1..64) * 4096
    note "registered size=#{size}"
    s = Fiber.scheduler
    buffer = IO::Buffer.new(size)
    s.io_buffer_register(buffer)
    r, w = IO.pipe
    data = @op_rng.bytes(size)
    writer = task { w.write(data); w.close }
    offset = 0
    while offset < size
      n = buffer.read(r, size - offset, offset)
      break if n == 0
      offset += n
    end
    writer.value
    check buffer.get_string(0, offset) == data.byteslice(0, offset) && offset == size, "registered buffer contents"
    @bytes += size
  ensure
    s&.io_buffer_unregister(buffer) if buffer
    [r, w].each { |io| io&.close unless io&.closed? }
  end
end

seed = options[:seed]
fds_before = open_fds
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
deadline = started + options[:seconds]
puts "stress: seed=#{seed} workers=#{options[:workers]} " +
     (options[:ops] ? "ops=#{options[:ops]} per worker" : "seconds=#{options[:seconds]}") +
     " io_uring=#{URING} mn_threads=#{ENV["RUBY_MN_THREADS"] == "1"} pid=#{Process.pid}"

Dir.mktmpdir("stress") do |dir|
  scheduled = {"both" => :even?.to_proc, "uring" => ->(_) { true }, "none" => ->(_) { false }}.fetch(options[:scheduler] || "both")
  abort "stress: --scheduler uring: no IO::Uring::Scheduler here" if options[:scheduler] == "uring" && !URING
  workers = Array.new(options[:workers]) { |i| Worker.new(i, seed, URING && scheduled.(i), dir, options[:verbose], options[:only]) }
  workers.each { |w| w.start(deadline, options[:ops]) }
  # The watchdog: a worker without progress for options[:stall] seconds.
  until workers.all? { |w| !w.thread.alive? }
    sleep 0.5
    stuck = workers.find { |w| w.thread.alive? && Process.clock_gettime(Process::CLOCK_MONOTONIC) - w.since > options[:stall] }
    next unless stuck
    puts "STUCK #{stuck.label} for #{options[:stall]}s in: #{stuck.doing}"
    puts "  thread backtrace:", *(stuck.thread.backtrace || []).map { "    #{_1}" }
    puts "  worker fiber backtrace:", *(stuck.fiber.backtrace || []).map { "    #{_1}" } if stuck.fiber&.alive?
    (Thread.list - [Thread.current] - workers.map(&:thread)).each do |t|
      puts "  thread #{t.inspect}:", *(t.backtrace || []).first(8).map { "    #{_1}" }
    end
    ObjectSpace.each_object(Fiber).select(&:alive?).each do |f|
      bt = f.backtrace rescue nil
      puts "  fiber #{f.inspect}:", *(bt || ["(no backtrace)"]).first(8).map { "    #{_1}" } if bt&.any?
    end
    puts "  (every fiber: gdb -p #{Process.pid} -ex 'source tools/gdb/ruby_uring.py' -ex 'ruby fibers -bt')"
    puts "stress: seed=#{seed} FAILED (hang)"
    exit!(2)
  end
  workers.each do |w|
    w.thread.join
  rescue Exception => e
    w.failures << "#{w.label}: #{e.class}: #{e.message}"
    puts "FAIL #{w.label}: #{e.full_message(highlight: false)}"
  end
  GC.start
  fds_after = open_fds
  elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  counts = workers.map(&:counts).inject { |a, b| a.merge(b) { |_, x, y| x + y } }
  failures = workers.flat_map(&:failures)
  if fds_after != fds_before
    open_now = Dir.children("/proc/self/fd").map { |fd| "#{fd}:#{File.readlink("/proc/self/fd/#{fd}") rescue "?"}" }
    failures << "descriptors: #{fds_before} before, #{fds_after} after: #{open_now.join(" ")}"
  end
  plan = Digest::SHA256.hexdigest(workers.map { |w| w.plan.hexdigest }.join)
  puts "stress: seed=#{seed} %.1fs ops=#{counts.values.sum} #{counts.sort.map { |k, v| "#{k}=#{v}" }.join(" ")} " \
       "bytes checked=#{workers.sum(&:bytes)} lost to interrupted reads/splices=#{workers.sum(&:lost)} " \
       "closes interrupted=#{workers.sum(&:interrupted_closes)} " \
       "fds #{fds_before}->#{fds_after} plan=#{plan[0, 12]} failures=#{failures.size}" % elapsed
  failures.each { |f| puts "  #{f}" }
  exit(failures.empty? ? 0 : 1)
end
