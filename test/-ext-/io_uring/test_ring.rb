# frozen_string_literal: false
require 'test/unit'
require 'timeout'
require '-test-/io_uring'

# The per-thread io_uring helper of io_uring.c, seen through Bug::IOUring.
class TestIOUringRing < Test::Unit::TestCase
  IO_URING_SETUP = 425           # the system call number, x86_64 and aarch64 alike
  PARAMS_SIZE = 120              # sizeof(struct io_uring_params)

  # Whether this process may create an io_uring, asked of the kernel directly
  # (not through the code under test), and not switched off by RUBY_IO_URING=0.
  # nil when that cannot be told.
  def self.kernel_allows_io_uring?
    return false if ENV["RUBY_IO_URING"] == "0"
    begin
      require 'fiddle'
    rescue LoadError
      disabled = File.read("/proc/sys/kernel/io_uring_disabled").to_i rescue (return nil)
      return disabled == 0 || (disabled == 1 && Process.euid == 0)
    end
    params = Fiddle::Pointer.malloc(PARAMS_SIZE, Fiddle::RUBY_FREE)
    params[0, PARAMS_SIZE] = "\0" * PARAMS_SIZE
    IO.for_fd(syscall(IO_URING_SETUP, 1, params.to_i)).close
    true
  rescue SystemCallError
    false
  end

  # The main thread's ring, if any, lives as long as the process: make it
  # before the test framework starts counting descriptors.
  Bug::IOUring.available?

  def setup
    @fds = open_fds
  end

  # Every test leaves the descriptors as it found them.  A thread's ring goes
  # with its native thread, which may outlive Thread#join by a moment.
  def teardown
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    sleep 0.01 until (open_fds - @fds).empty? ||
                     Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    assert_equal [], open_fds - @fds, "descriptors leaked"
  end

  def require_ring
    omit "ruby was built without io_uring" unless Bug::IOUring::COMPILED
    omit "the kernel refuses io_uring here" unless Bug::IOUring.available?
  end

  def open_fds
    fds = Dir.children("/proc/self/fd").map(&:to_i).sort
    return fds unless RUBY_DESCRIPTION.include?("+MN")
    # M:N threads: a ring belongs to a native thread of the pool, which
    # outlives the Ruby threads that ran on it
    fds.reject {|fd| File.readlink("/proc/self/fd/#{fd}") == "anon_inode:[io_uring]" rescue false}
  end

  def test_compiled_as_configured
    args = RbConfig::CONFIG["configure_args"]
    if args.match?(/--(disable-io-uring|without-liburing)\b/)
      assert_equal false, Bug::IOUring::COMPILED
    elsif args.match?(/--(enable-io-uring|with-liburing=)/)
      assert_equal true, Bug::IOUring::COMPILED
    end
    ruby = EnvUtil.rubybin
    if File.binread(ruby, 4) == "\x7FELF".b
      # Without io_uring, no io_uring code is in the binary at all.
      assert_equal Bug::IOUring::COMPILED, File.binread(ruby).include?("io_uring_queue_init_params")
    end
  end

  def test_available_as_the_kernel_says
    expected = Bug::IOUring::COMPILED && self.class.kernel_allows_io_uring?
    omit "cannot tell whether the kernel allows io_uring" if expected.nil?
    assert_equal expected, Bug::IOUring.available?
  end

  def test_disabled_by_environment
    omit "ruby was built without io_uring" unless Bug::IOUring::COMPILED
    assert_separately([{"RUBY_IO_URING" => "0"}, "-r-test-/io_uring"], <<~'RUBY')
      assert_equal false, Bug::IOUring.available?
      assert_equal false, Bug::IOUring.supported?(:nop)
      e = assert_raise(Errno::EPERM) { Bug::IOUring.nop }
      assert_match(/io_uring/, e.message)
      # The stock paths go on working.
      r, w = IO.pipe
      w.write("ok")
      assert_equal "ok", r.readpartial(10)
    RUBY
  end

  def test_nop
    require_ring
    assert_equal [0], Bug::IOUring.nop
    assert_equal [0] * 64, Bug::IOUring.nop(64)   # a full submission queue
    assert_raise(ArgumentError) { Bug::IOUring.nop(65) }
    assert_equal [0], Bug::IOUring.nop, "a refused batch must leave the ring usable"
  end

  def test_supported
    require_ring
    assert_equal true, Bug::IOUring.supported?(:nop)
    assert_equal true, Bug::IOUring.supported?(:read)
    assert_raise(ArgumentError) { Bug::IOUring.supported?(:no_such_operation) }
  end

  def test_read
    require_ring
    IO.pipe do |r, w|
      w.write("hello")
      assert_equal "hello", Bug::IOUring.read(r, 100)
      w.close
      assert_nil Bug::IOUring.read(r, 100)
    end
  end

  def test_read_error_is_errno
    require_ring
    IO.pipe do |r, w|
      assert_raise(Errno::EBADF) { Bug::IOUring.read(w, 10) }
      assert_equal [0], Bug::IOUring.nop
    end
  end

  def test_read_waits_without_gvl
    require_ring
    IO.pipe do |r, w|
      reader = Thread.new { Bug::IOUring.read(r, 100) }
      Thread.pass until reader.stop?
      w.write("late")     # this thread runs while the reader waits
      assert_equal "late", reader.value
    end
  end

  # An interrupted operation is cancelled before the exception propagates:
  # the data written afterwards is still in the pipe, not in a dead buffer.
  def assert_interrupt_cancels_read
    IO.pipe do |r, w|
      reader = Thread.new { Bug::IOUring.read(r, 100) }
      reader.report_on_exception = false
      Thread.pass until reader.stop?
      yield reader
      w.write("after")
      assert_equal "after", r.read_nonblock(100)
      assert_equal [0], Bug::IOUring.nop
    end
  end

  def test_thread_raise_cancels_read
    require_ring
    assert_interrupt_cancels_read do |reader|
      reader.raise(RuntimeError, "interrupted")
      e = assert_raise(RuntimeError) { reader.join }
      assert_equal "interrupted", e.message
    end
  end

  def test_thread_kill_cancels_read
    require_ring
    assert_interrupt_cancels_read do |reader|
      reader.kill
      assert_nil reader.value
      assert_equal false, reader.status
    end
  end

  def test_timeout_cancels_read
    require_ring
    IO.pipe do |r, w|
      assert_raise(Timeout::Error) { Timeout.timeout(0.1) { Bug::IOUring.read(r, 100) } }
      w.write("after")
      assert_equal "after", r.read_nonblock(100)
    end
  end

  # A signal trap interrupts the wait; the handler runs and the read goes on.
  def test_trap_restarts_read
    require_ring
    assert_separately(["-r-test-/io_uring"], <<~'RUBY')
      trapped = 0
      trap(:USR1) { trapped += 1 }
      IO.pipe do |r, w|
        writer = Thread.new do
          sleep 0.1
          Process.kill(:USR1, $$)
          sleep 0.1
          w.write("data")
        end
        assert_equal "data", Bug::IOUring.read(r, 100)
        # the write may not have returned yet: closing the pipe now would
        # raise IOError in it
        writer.join
      end
      assert_equal 1, trapped
    RUBY
  end

  # Rings belong to native threads, which M:N threads share.
  def require_dedicated_native_threads
    omit "M:N threads share native threads and their rings" if RUBY_DESCRIPTION.include?("+MN")
  end

  def test_one_ring_per_thread
    require_ring
    require_dedicated_native_threads
    main_fd = Bug::IOUring.ring_fd
    assert_equal main_fd, Bug::IOUring.ring_fd
    queue = Queue.new
    threads = 4.times.map do
      Thread.new do
        fd = Bug::IOUring.ring_fd
        Bug::IOUring.nop(8)
        queue.pop
        fd
      end
    end
    Thread.pass until threads.all?(&:stop?)
    4.times { queue << nil }
    fds = threads.map(&:value)
    assert_equal 5, (fds + [main_fd]).uniq.size, "each thread has its own ring"
  end

  # A ring is held by one caller at a time (IO.copy_stream holds it for the
  # whole copy): under M:N threads, Ruby threads taking turns on a native
  # thread must not reap or cancel each other's operations.  Another use
  # meanwhile is refused, and IO.copy_stream takes its ordinary loop.
  def test_held_ring_is_refused_to_others
    require_ring
    fd = Bug::IOUring.ring_fd
    copied = Bug::IOUring.hold do
      assert_raise(Errno::EBUSY) { Bug::IOUring.nop }
      assert_raise(Errno::EBUSY) { Bug::IOUring.ring_fd }
      IO.pipe do |r, w|
        IO.pipe do |r2, w2|
          w.write("held")
          w.close
          n = IO.copy_stream(r, w2)
          w2.close
          [n, r2.read]
        end
      end
    end
    assert_equal [4, "held"], copied
    assert_equal [0], Bug::IOUring.nop, "the ring is free again"
    assert_equal fd, Bug::IOUring.ring_fd
    assert_raise(RuntimeError) { Bug::IOUring.hold { raise "in the block" } }
    assert_equal [0], Bug::IOUring.nop, "released when the block raises"
  end

  def test_rings_are_released_when_threads_exit
    require_ring
    require_dedicated_native_threads
    20.times { Thread.new { Bug::IOUring.nop }.join }
    # teardown checks that all 20 rings are gone
  end

  def test_fork_child_never_uses_parents_ring
    require_ring
    parent_fd = Bug::IOUring.ring_fd
    5.times do
      pid = fork do
        # The parent's ring was closed in the child before anything ran.
        exit!(3) if File.exist?("/proc/self/fd/#{parent_fd}") &&
                    File.readlink("/proc/self/fd/#{parent_fd}").include?("io_uring")
        exit!(4) unless Bug::IOUring.nop(8) == [0] * 8
        IO.pipe do |r, w|
          w.write("child")
          exit!(5) unless Bug::IOUring.read(r, 10) == "child"
        end
        exit!(0)
      end
      # The parent keeps submitting while the child runs.
      status = nil
      assert_equal [0] * 4, Bug::IOUring.nop(4) until (status = Process.waitpid2(pid, Process::WNOHANG))
      assert_equal 0, status[1].exitstatus
    end
    assert_equal parent_fd, Bug::IOUring.ring_fd
  end
end
