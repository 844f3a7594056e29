# frozen_string_literal: false
require 'test/unit'
require_relative 'uring_test_helper'

# Faults injected into a child process: io_uring refused after start-up (a
# seccomp filter), locked-memory limits, no descriptor left for splice's
# pipes, a peer that resets in the middle of a copy.  Each gets a clear
# error or the path stock takes, with every byte and descriptor accounted.
class TestIOUringFaults < Test::Unit::TestCase
  include IOUringTestHelper

  # A seccomp filter refusing system calls with an errno
  # (ext/-test-/seccomp, a C test extension: fiddle is a bundled gem on
  # master, which the test runner does not load).
  SECCOMP = <<~'RUBY'
    require "-test-/seccomp"
    Seccomp = Bug::Seccomp
    Warning[:experimental] = false    # IO::Buffer's, printed on master
    def fds = Dir.children("/proc/self/fd").size
  RUBY

  def setup
    super
    omit "a seccomp filter (Linux)" unless RUBY_PLATFORM.include?("linux")
  end

  def test_io_uring_setup_refused_mid_run
    assert_separately([], SECCOMP + <<~'RUBY', timeout: 60)
      require "io/uring"
      running = IO::Uring::Scheduler.new
      r, w = IO.pipe
      Seccomp.refuse([Seccomp::IO_URING_SETUP], Errno::EPERM::Errno)
      before = fds
      3.times do
        assert_raise_with_message(Errno::EPERM, /io_uring_queue_init_params/) { IO::Uring::Scheduler.new }
      end
      assert_equal before, fds
      # the ring made before goes on
      result = nil
      Thread.new do
        Fiber.set_scheduler(running)
        Fiber.schedule { result = r.read(5) }
        Fiber.schedule { w.write("hello") }
      end.join(10) or flunk "hung"
      assert_equal "hello", result
    RUBY
  end

  # A ring that loses io_uring_enter(2) cannot wait any more: its thread
  # ends with the error (its waiting fibers with it), it does not hang.
  def test_io_uring_enter_refused_mid_run
    assert_separately([], SECCOMP + <<~'RUBY', timeout: 60)
      require "io/uring"
      scheduler = IO::Uring::Scheduler.new
      r, _w = IO.pipe
      Seccomp.refuse([Seccomp::IO_URING_ENTER], Errno::EPERM::Errno)
      thread = Thread.new do
        Thread.current.report_on_exception = false
        Fiber.set_scheduler(scheduler)
        Fiber.schedule { r.read(1) }
      end
      error = assert_raise(Errno::EPERM) { thread.join(10) or flunk "hung" }
      assert_match(/io_uring_enter/, error.message)
      refute_predicate thread, :alive?
    RUBY
  end

  # Unprivileged, with a small RLIMIT_MEMLOCK: a ring that does not fit is
  # ENOMEM at IO::Uring::Scheduler.new; a buffer that does not fit is not
  # registered (false, counted as a refusal) and reads into it work.
  def test_locked_memory_limits
    omit "needs root to become another user" unless Process.uid == 0
    assert_separately([], <<~'RUBY', timeout: 60)
      require "io/uring"
      Warning[:experimental] = false
      def as_nobody(memlock)
        pid = fork do
          Process.setrlimit(:MEMLOCK, memlock)
          Process::Sys.setgid(65534)
          Process::Sys.setuid(65534)
          yield
          exit!(0)
        rescue Exception => e
          $stderr.puts e.full_message
          exit!(1)
        end
        Process.wait(pid)
        assert_predicate $?, :success?
      end
      as_nobody(0) do
        e = assert_raise(Errno::ENOMEM) { IO::Uring::Scheduler.new }
        raise "unexpected: #{e.message}" unless e.message.include?("io_uring_queue_init_params")
      end
      as_nobody(1 << 20) do
        scheduler = IO::Uring::Scheduler.new
        r, w = IO.pipe
        Thread.new do
          Fiber.set_scheduler(scheduler)
          Fiber.schedule do
            buffer = IO::Buffer.new(4 << 20)
            raise "registered" unless scheduler.io_buffer_register(buffer) == false
            stats = scheduler.io_buffer_stats
            raise stats.inspect unless stats[:refusals] == 1 && stats[:registered] == 0
            w.write("abc")
            raise "read" unless buffer.read(r, 3) == 3 && buffer.get_string(0, 3) == "abc"
          end
        end.join
      end
    RUBY
  end

  # No descriptor left for the pipes of a splice: IO.copy_stream between
  # sockets still copies everything, with a scheduler and without, and
  # leaves no descriptor behind.
  def test_no_descriptor_for_splice_pipes
    assert_separately([], <<~'RUBY', timeout: 60)
      require "io/uring"
      require "socket"
      require "digest"
      data = Random.new(42).bytes(4 << 20)
      [false, true].each do |scheduled|
        a1, a2 = UNIXSocket.pair
        b1, b2 = UNIXSocket.pair
        base = Dir.children("/proc/self/fd").size - 1
        scheduler = IO::Uring::Scheduler.new if scheduled   # closed with its thread
        writer = Thread.new { a1.write(data) }
        received = +""
        reader = Thread.new { received << b2.read }
        # no descriptor can be opened: the lowest free number is the limit
        lowest_free = (0..).find { |fd| !File.exist?("/proc/self/fd/#{fd}") }
        limit = Process.getrlimit(:NOFILE)
        copied = nil
        begin
          Process.setrlimit(:NOFILE, lowest_free, limit[1])
          assert_raise(Errno::EMFILE) { IO.pipe }
          Thread.new do
            work = -> { copied = IO.copy_stream(a2, b1, data.bytesize) }
            if scheduled
              Fiber.set_scheduler(scheduler)
              Fiber.schedule(&work)
            else
              work.call
            end
          end.join(30) or flunk "hung"
        ensure
          Process.setrlimit(:NOFILE, *limit)
        end
        assert_equal base, Dir.children("/proc/self/fd").size - 1, "descriptors (scheduled: #{scheduled})"
        b1.close
        writer.join
        reader.join
        assert_equal data.bytesize, copied
        assert_equal Digest::SHA256.hexdigest(data), Digest::SHA256.hexdigest(received)
        [a1, a2, b2].each(&:close)
      end
    RUBY
  end

  # The pipe-user-pages quota (fs.pipe-user-pages-soft/-hard) of an
  # unprivileged user: past the soft limit new pipes hold two pages and
  # F_SETPIPE_SZ is EPERM, so splices go through small pipes; past the hard
  # limit pipe(2) is ENFILE, and the copy takes the stock path.  Each copy
  # (between sockets, with a scheduler and without) delivers every byte and
  # leaves no descriptor.
  #
  # The limits are global (not per namespace).  The child runs as a uid no
  # other test uses (the accounting is per user), the window lasts a
  # fraction of a second, and the limits are restored by this process
  # (also if the child is killed).  Unprivileged processes of other users
  # that hold more than two pipes meanwhile get small pipes, and beyond 64
  # pages, ENFILE: the tests that run as nobody hold a few.
  SOFT = "/proc/sys/fs/pipe-user-pages-soft"
  HARD = "/proc/sys/fs/pipe-user-pages-hard"

  def test_pipe_user_pages_quota
    omit "needs root to set the quota and become another user" unless Process.uid == 0
    # root's own pipes are exempt only with CAP_SYS_RESOURCE or CAP_SYS_ADMIN
    caps = File.read("/proc/self/status")[/^CapEff:\s*(\h+)/, 1].to_i(16)
    omit "root without CAP_SYS_RESOURCE and CAP_SYS_ADMIN" if caps & ((1 << 24) | (1 << 21)) == 0
    soft, hard = File.read(SOFT), File.read(HARD)
    begin
      File.write(SOFT, "32")          # two default pipes
      File.write(HARD, "64")
    rescue Errno::EROFS, Errno::EACCES, Errno::EPERM => e
      omit "cannot set the quota here (#{e.class})"
    end
    assert_separately([], <<~'RUBY', timeout: 90)
      require "io/uring"
      require "socket"
      require "digest"
      require "digest/sha2"   # Digest::SHA256 autoloads it; the child may not read the tree
      Warning[:experimental] = false
      class CountingScheduler < IO::Uring::Scheduler
        attr_reader :splices
        def io_splice(*args)
          result = super
          (@splices ||= []) << result
          result
        end
      end
      def copy(scheduled, data)
        a1, a2 = UNIXSocket.pair
        b1, b2 = UNIXSocket.pair
        base = Dir.children("/proc/self/fd").size
        writer = Thread.new { a1.write(data); a1.close }
        received = +""
        reader = Thread.new { received << b2.read }
        copied = scheduler = nil
        Thread.new do
          work = -> { copied = IO.copy_stream(a2, b1, data.bytesize) }
          if scheduled
            Fiber.set_scheduler(scheduler = CountingScheduler.new)
            Fiber.schedule(&work)
          else
            work.call
          end
        end.join(30) or raise "hung (scheduled: #{scheduled})"
        b1.close
        [writer, reader].each(&:join)
        raise "copied #{copied}" unless copied == data.bytesize
        raise "bytes differ" unless Digest::SHA256.digest(received) == Digest::SHA256.digest(data)
        [a2, b2].each(&:close)
        raise "descriptors" unless Dir.children("/proc/self/fd").size == base - 4
        scheduler&.splices
      end
      err_r, err_w = IO.pipe
      pid = fork do
        err_r.close
        Process::Sys.setgid(40123)
        Process::Sys.setuid(40123)
        data = Random.new(7).bytes(4 << 20)
        phase = :soft
        held = [IO.pipe, IO.pipe]                 # the soft limit
        r, w = IO.pipe
        small = 2 * IO::Buffer::PAGE_SIZE
        raise "pipe size #{r.fcntl(1032)}" unless r.fcntl(1032) == small   # F_GETPIPE_SZ
        held << [r, w]
        splices = copy(true, data)
        raise "io_splice: #{splices.inspect}" unless splices&.first.is_a?(Integer) && splices.first > 0
        copy(false, data)
        phase = :hard
        loop { held << IO.pipe }                  # the hard limit
      rescue Errno::ENFILE
        raise unless phase == :hard && held.size > 3
        splices = copy(true, data)
        raise "io_splice: #{splices.inspect}" unless splices == [nil]   # declined
        copy(false, data)
        exit!(0)
      rescue Exception => e
        err_w.write(e.full_message(highlight: false))
        exit!(1)
      end
      err_w.close
      Process.wait(pid)
      assert_predicate $?, :success?, err_r.read
    RUBY
  ensure
    File.write(SOFT, soft) if soft
    File.write(HARD, hard) if hard
  end

  # The source's peer resets the connection in the middle of a copy: the
  # same exception as without a scheduler, and no descriptor left.
  def test_peer_reset_mid_copy
    assert_separately([], <<~'RUBY', timeout: 60)
      require "io/uring"
      require "socket"
      def reset_copy(scheduled)
        server = TCPServer.new("127.0.0.1", 0)
        peer = TCPSocket.new("127.0.0.1", server.addr[1])
        source = server.accept
        sink_r, sink_w = IO.pipe
        drain = Thread.new { sink_r.read }
        peer.write("x" * 100_000)
        error = nil
        thread = Thread.new do
          work = -> do
            IO.copy_stream(source, sink_w)
          rescue => e
            error = e
          end
          if scheduled
            Fiber.set_scheduler(IO::Uring::Scheduler.new)
            Fiber.schedule(&work)
          else
            work.call
          end
        end
        sleep 0.2
        # unread data in the peer's queue and SO_LINGER 0: an RST
        source_peer_unread = peer
        source_peer_unread.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
        source_peer_unread.close
        thread.join(10) or flunk "hung"
        sink_w.close
        drain.join
        [source, sink_r, server].each(&:close)
        error&.class
      end
      before = Dir.children("/proc/self/fd").size
      stock = reset_copy(false)
      assert_equal stock, reset_copy(true)
      assert_equal before, Dir.children("/proc/self/fd").size
    RUBY
  end
end
