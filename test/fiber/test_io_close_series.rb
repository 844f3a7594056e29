# frozen_string_literal: true
require 'test/unit'
require 'socket'
require 'tempfile'
require_relative 'scheduler'

# IO#close under a fiber scheduler: the fibers and threads using the
# descriptor are interrupted, the descriptor is held until they are gone, and
# the scheduler's #io_close closes it.  This is the 3.4 series' protocol
# (patch 0001).  Master has its own (a per-IO blocking-operation list), which
# the master series extends (#io_close's -errno, users that cannot leave,
# both halves of a duplex IO, an interrupted closer, finalizers).  The cases
# where the two protocols still differ are omitted on master with the reason
# (omit_on_master); see docs/proposals/io_close.md.
class TestFiberIOCloseSeries < Test::Unit::TestCase
  # Records the descriptors #io_close is given; `result` decides what it does.
  class RecordingScheduler < Scheduler
    attr_reader :closed_descriptors
    attr_accessor :result

    def initialize(...)
      super
      @closed_descriptors = []
      @result = :close
    end

    def io_close(descriptor)
      @closed_descriptors << descriptor
      case @result
      when :close then super
      when Proc then @result.call(descriptor)
      else @result
      end
    end
  end

  # Interrupts fibers only when told to (#release).
  class LazyScheduler < Scheduler
    def fiber_interrupt(fiber, exception)
      @lock.synchronize do
        @readable.delete_if {|_, waiting| waiting.equal?(fiber)}
        (@deferred ||= []) << [fiber, exception]
      end
    end

    def release
      deferred = @lock.synchronize { @deferred.dup }
      deferred.each { |fiber, exception| method(:fiber_interrupt).super_method.call(fiber, exception) }
    end
  end

  # Keeps its hooks to itself: no #fiber_interrupt, no #io_close.
  class PlainScheduler < Scheduler
    undef_method :fiber_interrupt
    undef_method :io_close
  end

  def setup
    @fds = open_fds
  end

  def teardown
    return unless @fds
    GC.start
    assert_equal(@fds, open_fds, "descriptors leaked")
  end

  def open_fds
    Dir.children("/proc/self/fd").map(&:to_i).sort
  rescue Errno::ENOENT
    []
  end

  # Master's protocol differs here: changing it is a proposal of its own
  # (docs/proposals/io_close.md), not a fix.
  def omit_on_master(why)
    omit "master's IO#close protocol: #{why}" if RUBY_VERSION >= "4"
  end

  def fd_open?(fd)
    File.exist?("/proc/self/fd/#{fd}")
  end

  # Runs the block in a fiber of a new thread's scheduler; returns it.
  def in_scheduler(scheduler_class = Scheduler, **settings, &block)
    Thread.new do
      scheduler = scheduler_class.new
      settings.each { |name, value| scheduler.public_send("#{name}=", value) }
      Fiber.set_scheduler(scheduler)
      Fiber.schedule(&block)
      scheduler
    end.value
  end

  # Runs the block in the root fiber of a new thread with a scheduler, to
  # schedule fibers; returns the scheduler.
  def with_scheduler(scheduler_class = Scheduler, **settings)
    thread = Thread.new do
      scheduler = scheduler_class.new
      settings.each { |name, value| scheduler.public_send("#{name}=", value) }
      Fiber.set_scheduler(scheduler)
      yield
      scheduler
    end
    thread.join(30) or flunk("the scheduler thread hung")
    thread.value
  ensure
    thread&.kill
  end

  def close_blocking(descriptor)
    Fiber.blocking { IO.for_fd(descriptor).close }
  end

  def assert_closed_error(error)
    assert_kind_of(IOError, error)
    assert_match(/closed/, error.message)
  end

  def test_close_interrupts_reader_in_another_fiber
    r, w = IO.pipe
    error = nil
    Thread.new do
      Fiber.set_scheduler(Scheduler.new)
      Fiber.schedule do
        r.read
      rescue IOError => error
      end
      Fiber.schedule { r.close }
    end.join
    assert_closed_error(error)
    assert_predicate(r, :closed?)
  ensure
    r&.close
    w&.close
  end

  # A thread whose scheduler runs a fiber reading r; returned once the fiber
  # waits in the scheduler (which then waits for the descriptors).
  def reading_thread(r, scheduler_class = Scheduler)
    scheduler = nil
    reading = false
    errors = []
    thread = Thread.new do
      Fiber.set_scheduler(scheduler = scheduler_class.new)
      Fiber.schedule do
        reading = true
        r.read
      rescue IOError => error
        errors << error
      end
    end
    # The reader has suspended and the thread runs the scheduler's loop (not
    # the reader's blocking region, about to call the scheduler):
    Thread.pass until reading && thread.status == "sleep" &&
                      thread.backtrace.to_a.any? { |line| line.include?("#run'") }
    [thread, scheduler, errors]
  end

  def test_close_from_another_thread_interrupts_fiber
    r, w = IO.pipe
    thread, _, errors = reading_thread(r)
    r.close
    thread.join
    assert_equal(1, errors.size)
    assert_closed_error(errors.first)
  ensure
    r&.close
    w&.close
  end

  def test_close_in_fiber_interrupts_blocking_thread
    r, w = IO.pipe
    error = nil
    reader = Thread.new do
      r.read
    rescue IOError => error
    end
    Thread.pass until reader.status == "sleep"
    in_scheduler { r.close }
    reader.join
    assert_closed_error(error)
  ensure
    r&.close
    w&.close
  end

  # IO#close from another thread does not wait for the fiber: the fiber
  # leaves its hook only when its thread runs the scheduler's loop, and here
  # that thread's root fiber (blocking, so the loop does not run) waits for
  # the closer.  When the close waited for the fiber, the two deadlocked.
  # #fiber_interrupt has made the fiber raise; it raises once its loop runs,
  # without touching the descriptor number, which may be another file's by
  # then.
  def test_close_from_another_thread_does_not_wait_for_its_loop
    omit_on_master "a closer from another thread waits for the users' loop"
    require 'timeout'
    r, w = IO.pipe
    reading = Thread::Queue.new
    closed = Thread::Queue.new
    errors = []
    thread = Thread.new do
      Fiber.set_scheduler(Scheduler.new)
      Fiber.schedule do
        r.read
      rescue IOError => error
        errors << error
      end
      reading << true # the reader waits in its scheduler
      closed.pop # in the root fiber: a blocking wait, no loop
    end
    reading.pop
    Thread.pass until thread.status == "sleep"
    Timeout.timeout(5) { r.close }
    assert_predicate(r, :closed?)
    closed << :closed
    assert_same(thread, thread.join(10), "the scheduler's thread did not end")
    assert_equal(1, errors.size)
    assert_closed_error(errors.first)
  ensure
    thread&.kill&.join
    r&.close
    w&.close
  end

  # Once IO#close from another thread has returned, the number may be given
  # to another file before the fiber's loop runs.  The fiber raises when it
  # does, and nothing of the fiber's reaches the new file: the scheduler
  # starts no operation on the number after #fiber_interrupt.
  def test_close_from_another_thread_then_number_reused
    omit_on_master "a closer from another thread waits for the users' loop"
    require 'fcntl'
    require 'timeout'
    r, w = IO.pipe
    fd = r.fileno
    reading = Thread::Queue.new
    closed = Thread::Queue.new
    errors = []
    thread = Thread.new do
      Fiber.set_scheduler(Scheduler.new)
      Fiber.schedule do
        r.read(5)
      rescue IOError => error
        errors << error
      end
      reading << true # the reader waits in its scheduler
      closed.pop # in the root fiber: a blocking wait, no loop
    end
    reading.pop
    Thread.pass until thread.status == "sleep"
    r2, w2 = IO.pipe
    Timeout.timeout(5) { r.close }
    # the lowest free descriptor from fd on: fd itself
    other = IO.for_fd(r2.fcntl(Fcntl::F_DUPFD, fd), autoclose: true)
    assert_equal(fd, other.fileno)
    w2.write("fresh")
    closed << :closed
    assert_same(thread, thread.join(10), "the scheduler's thread did not end")
    assert_equal(1, errors.size)
    assert_closed_error(errors.first)
    assert_equal("fresh", other.read_nonblock(10, exception: false),
                 "the fiber's read reached the file that reused its number")
  ensure
    thread&.kill&.join
    [r, w, r2, w2, other].each { |io| io&.close }
  end

  # The same with a Mutex: the closer holds it, and the root fiber of the
  # reader's thread waits for it.
  def test_close_from_another_thread_holding_a_mutex
    omit_on_master "a closer from another thread waits for the users' loop, holding its mutex"
    require 'timeout'
    r, w = IO.pipe
    mutex = Thread::Mutex.new
    reading = Thread::Queue.new
    errors = []
    thread = nil
    mutex.synchronize do
      thread = Thread.new do
        Fiber.set_scheduler(Scheduler.new)
        Fiber.schedule do
          r.read
        rescue IOError => error
          errors << error
        end
        reading << true # the reader waits in its scheduler
        mutex.synchronize { :locked }
      end
      reading.pop
      Thread.pass until thread.status == "sleep"
      Timeout.timeout(5) { r.close }
    end
    assert_same(thread, thread.join(10), "the scheduler's thread did not end")
    assert_equal(:locked, thread.value)
    assert_equal(1, errors.size)
    assert_closed_error(errors.first)
  ensure
    thread&.kill&.join
    r&.close
    w&.close
  end

  # The blocking root fiber of the scheduler's thread closing an IO one of
  # its fibers waits on: test_io_close_users.rb
  # (test_blocking_closer_does_not_wait_for_its_own_schedulers_fiber).

  # A closer in a non-blocking fiber waits for the fibers of its own thread
  # using the descriptor (not for other threads' fibers: see
  # test_close_from_another_thread_does_not_wait_for_its_loop).  Interrupted
  # while it waits (here by Fiber#raise, as a timeout of the scheduler
  # does), it closes the IO anyway, raises, and the fiber leaving later
  # finds nothing dangling.
  def test_closer_interrupted_while_waiting
    assert_closer_interrupted_while_waiting(:reader) { |r, _w| r.read }
  end

  # The same for a writable IO, whose close(2) may be offloaded by a
  # scheduler (#blocking_operation_wait): interrupted, the closer closes it
  # without running the scheduler again.
  def test_closer_of_a_writer_interrupted_while_waiting
    assert_closer_interrupted_while_waiting(:writer) { |_r, w| loop { w.write("x" * 65536) } }
  end

  # A user of one end of a pipe (the block), and a closer of that end that
  # is raised into while LazyScheduler has not interrupted the user yet.
  def assert_closer_interrupted_while_waiting(end_used)
    r, w = IO.pipe
    io = end_used == :reader ? r : w
    fd = io.fileno
    errors = []
    closed = nil
    with_scheduler(LazyScheduler) do
      Fiber.schedule do
        yield r, w
      rescue IOError => error
        errors << error
      end
      closer = Fiber.schedule do
        io.close
      rescue Interrupt => error
        closed = [error.message, io.closed?, fd_open?(fd)]
      end
      # The closer waits for the user, which LazyScheduler has not
      # interrupted yet.
      closer.raise(Interrupt, "stop waiting")
      Fiber.scheduler.release
    end
    assert_equal(["stop waiting", true, false], closed)
    assert_equal(1, errors.size)
    assert_closed_error(errors.first)
  ensure
    r&.close
    w&.close
  end

  def test_close_interrupts_writer
    r, w = IO.pipe
    error = nil
    with_scheduler do
      Fiber.schedule do
        w.write("x" * 1_000_000) # more than the pipe holds
      rescue IOError => error
      end
      Fiber.schedule { w.close }
    end
    assert_closed_error(error)
  ensure
    r&.close
    w&.close
  end

  def test_hook_receives_integer_descriptor
    r, w = IO.pipe
    fds = [r.fileno, w.fileno]
    scheduler = in_scheduler(RecordingScheduler) do
      r.close
      w.close
    end
    assert_equal(fds, scheduler.closed_descriptors)
    fds.each { |fd| refute(fd_open?(fd), "fd #{fd} still open") }
  end

  def test_io_is_closed_while_the_hook_runs
    r, w = IO.pipe
    fd = r.fileno
    seen = nil
    hook = proc do |descriptor|
      seen = [r.closed?, fd_open?(descriptor), (r.read_nonblock(1) rescue $!)]
      close_blocking(descriptor)
      true
    end
    in_scheduler(RecordingScheduler, result: hook) { r.close }
    assert_equal(true, seen[0], "closed? during #io_close")
    assert_equal(true, seen[1], "descriptor held until #io_close closes it")
    assert_kind_of(IOError, seen[2])
    refute(fd_open?(fd))
  ensure
    w&.close
  end

  # Another fiber runs while the scheduler closes the descriptor: it cannot
  # use the IO, and a new pipe is not given the number being closed.
  def test_descriptor_not_reused_while_closing
    r, w = IO.pipe
    fd = r.fileno
    other = nil
    hook = proc do |descriptor|
      sleep 0.01 # lets the other fiber run
      close_blocking(descriptor)
      true
    end
    with_scheduler(RecordingScheduler, result: hook) do
      Fiber.schedule { r.close }
      Fiber.schedule do
        other = IO.pipe # while r's descriptor is being closed
        other << (r.read rescue $!)
      end
    end
    refute_includes(other[0..1].map(&:fileno), fd)
    assert_kind_of(IOError, other[2])
  ensure
    w&.close
    other&.first(2)&.each(&:close)
  end

  def test_hook_returning_falsy_lets_ruby_close
    [nil, false].each do |result|
      r, w = IO.pipe
      fd = r.fileno
      scheduler = in_scheduler(RecordingScheduler, result: result) { r.close }
      assert_equal([fd], scheduler.closed_descriptors)
      refute(fd_open?(fd), "#{result.inspect}: fd #{fd} left open")
      w.close
    end
  end

  def test_hook_errno_raises_like_close
    Tempfile.create("io_close") do |file|
      io = File.open(file.path)
      hook = proc do |descriptor|
        close_blocking(descriptor)
        -Errno::EIO::Errno
      end
      error = nil
      in_scheduler(RecordingScheduler, result: hook) do
        io.close
      rescue SystemCallError => error
      end
      assert_kind_of(Errno::EIO, error)
      assert_include(error.message, file.path)
      assert_predicate(io, :closed?)
    end
  end

  # A failing close(2) raises the same with and without the hook.
  def test_close_failure_same_as_without_scheduler
    errors = [RecordingScheduler, nil].map do |scheduler|
      Tempfile.create("io_close") do |file|
        error = nil
        body = proc do
          io = File.open(file.path)
          close_blocking(io.fileno) # behind the IO's back
          io.close
        rescue SystemCallError => error
        end
        scheduler ? in_scheduler(scheduler, &body) : body.call
        [error.class, error.message.sub(file.path, "PATH")]
      end
    end
    assert_equal(Errno::EBADF, errors[0][0])
    assert_equal(errors[1], errors[0])
  end

  # The hook owns the descriptor once called: if it raises, Ruby does not
  # close the descriptor itself.
  def test_hook_raising
    r, w = IO.pipe
    fd = r.fileno
    error = nil
    in_scheduler(RecordingScheduler, result: proc { raise "hook failed" }) do
      r.close
    rescue RuntimeError => error
    end
    assert_equal("hook failed", error.message)
    assert_predicate(r, :closed?)
    assert(fd_open?(fd), "Ruby closed the descriptor the hook owned")
    IO.for_fd(fd).close
  ensure
    w&.close
  end

  def test_fiber_interrupt_raising
    r, w = IO.pipe
    error = nil
    reader_error = nil
    scheduler_class = Class.new(Scheduler) do
      def fiber_interrupt(fiber, exception)
        super
        raise "interrupt failed"
      end
    end
    with_scheduler(scheduler_class) do
      Fiber.schedule do
        r.read
      rescue IOError => reader_error
      end
      Fiber.schedule do
        r.close
      rescue RuntimeError => error
      end
    end
    assert_equal("interrupt failed", error.message)
    assert_predicate(r, :closed?)
    assert_closed_error(reader_error)
  ensure
    w&.close
  end

  def test_hook_not_called_from_blocking_fiber
    r, w = IO.pipe
    scheduler = in_scheduler(RecordingScheduler) do
      Fiber.blocking { r.close }
    end
    assert_equal([], scheduler.closed_descriptors)
    assert_predicate(r, :closed?)
  ensure
    w&.close
  end

  def test_hook_not_called_for_standard_descriptors
    scheduler = in_scheduler(RecordingScheduler) do
      IO.new(2, autoclose: false).close
      IO.new(1).tap { |io| io.autoclose = false }.close
    end
    assert_equal([], scheduler.closed_descriptors)
  end

  def test_hook_not_called_by_finalizer
    fds = nil
    scheduler = in_scheduler(RecordingScheduler) do
      Fiber.new { fds = 20.times.flat_map { IO.pipe.map(&:fileno) } }.resume
      3.times { GC.start }
    end
    finalized = fds.reject { |fd| fd_open?(fd) }
    omit "GC finalized no pipe" if finalized.empty?
    assert_equal([], scheduler.closed_descriptors & fds)
  ensure
    ObjectSpace.each_object(IO) do |io|
      io.close if !io.closed? && fds&.include?(io.fileno)
    rescue IOError
    end
  end

  def test_block_forms_call_the_hook
    fds = {}
    scheduler = in_scheduler(RecordingScheduler) do
      Tempfile.create("io_close") do |file|
        File.open(file.path) { |f| fds[:file] = [f.fileno] }
      end
      IO.pipe { |r, w| fds[:pipe] = [r.fileno, w.fileno] }
      UNIXSocket.pair { |a, b| fds[:socket] = [a.fileno, b.fileno] }
      IO.popen(["true"]) { |io| fds[:popen] = [io.fileno] }
    end
    fds.each do |kind, list|
      assert_equal(list.sort, (scheduler.closed_descriptors & list).sort, kind)
    end
  end

  def test_popen_close_reaps_child
    status = nil
    scheduler = in_scheduler(RecordingScheduler) do
      io = IO.popen(["sh", "-c", "exit 3"])
      io.close
      status = $?
    end
    assert_equal(1, scheduler.closed_descriptors.size)
    assert_equal(3, status.exitstatus)
  end

  def test_close_read_and_close_write_on_duplex_popen
    read_fd = nil
    output = nil
    scheduler = in_scheduler(RecordingScheduler) do
      IO.popen(["cat"], "r+") do |io|
        read_fd = io.fileno
        io.write("duplex")
        io.close_write # the write pipe
        output = io.read
        io.close_read  # the read pipe, and the child is reaped
      end
    end
    assert_equal("duplex", output)
    assert_equal(2, scheduler.closed_descriptors.size)
    assert_equal(read_fd, scheduler.closed_descriptors.last)
    refute_equal(read_fd, scheduler.closed_descriptors.first)
  end

  # Both halves of a duplex IO are descriptors with users of their own.
  def test_close_read_on_duplex_interrupts_reader
    error = nil
    with_scheduler do
      io = IO.popen(["cat"], "r+")
      Fiber.schedule do
        io.read
      rescue IOError => error
      end
      Fiber.schedule do
        io.close_read
        io.close
      end
    end
    assert_closed_error(error)
  end

  # A duplex IO's writer: test_io_close_users.rb, which runs on master too.

  def test_socket_close_and_close_read
    a, b = UNIXSocket.pair
    fds = [a.fileno, b.fileno]
    scheduler = in_scheduler(RecordingScheduler) do
      a.close_read # shutdown(2), the descriptor stays
      a.close_write
      b.close
    end
    assert_equal(fds, scheduler.closed_descriptors)
    assert_predicate(a, :closed?)
  end

  def test_many_closes_in_flight
    pipes = 200.times.map { IO.pipe } # IO.select (the test scheduler) stops at 1024
    errors = []
    with_scheduler do
      pipes.each do |r, _|
        Fiber.schedule do
          r.read
        rescue IOError => error
          errors << error
        end
      end
      pipes.each do |r, w|
        Fiber.schedule do
          r.close
          w.close
        end
      end
    end
    assert_equal(200, errors.size)
    errors.each { |error| assert_closed_error(error) }
    assert(pipes.flatten.all?(&:closed?))
  ensure
    pipes&.flatten&.each(&:close)
  end

  # A scheduler without #fiber_interrupt keeps the earlier behaviour: its
  # fibers are not tracked, and #io_close is not there to be called.
  def test_scheduler_without_the_protocol
    r, w = IO.pipe
    in_scheduler(PlainScheduler) do
      w << "data"
      assert_equal("data", r.read(4))
      r.close
      w.close
    end
    assert_predicate(r, :closed?)
  end

  # A thread that ended with a fiber still inside an I/O hook (its
  # scheduler's loop raised) left the fiber's entry registered, naming the
  # freed thread: a later IO#close of the descriptor crashed
  # ([BUG] pthread_mutex_lock).
  def test_close_after_the_thread_ended_with_a_fiber_in_a_hook
    assert_separately(["-r#{File.expand_path("scheduler", __dir__)}"], <<~'RUBY', timeout: 30)
      failing = Class.new(Scheduler) { def run = raise("loop failed") }
      r, w = IO.pipe
      thread = Thread.new do
        Thread.current.report_on_exception = false
        Fiber.set_scheduler(failing.new)
        Fiber.schedule { r.read }
      end
      assert_raise_with_message(RuntimeError, "loop failed") { thread.join }
      GC.start
      r.close
      w.close
      assert_predicate r, :closed?
    RUBY
  end
  # A scheduler that never resumes the closer (its thread ends first): the
  # close waits forever, and its fibers, whose stacks hold the wait list and
  # its users' entries, stay alive rather than be freed under the list.
  def test_abandoned_close_keeps_its_fibers
    # IO::Buffer's experimental warning (printed on master) is not the test.
    assert_separately(["-W:no-experimental"], <<~'RUBY', timeout: 60)
      require "objspace"
      class Forgetful
        def io_wait(io, events, timeout) = Fiber.yield
        def kernel_sleep(*) = Fiber.yield
        def block(*) = Fiber.yield
        def unblock(*) = nil
        def fiber(&block) = Fiber.new(blocking: false, &block).tap(&:resume)
        def fiber_interrupt(fiber, exception) = nil
        def close = nil
      end
      r, w = IO.pipe
      fibers = ObjectSpace::WeakMap.new
      Thread.new do
        Fiber.set_scheduler(Forgetful.new)
        reader = Fiber.schedule { r.read(1) }
        closer = Fiber.schedule { r.close }
        fibers[:reader] = reader
        fibers[:closer] = closer
      end.join
      4.times { GC.start(full_mark: true, immediate_sweep: true) }
      GC.compact if GC.respond_to?(:compact)
      assert_predicate fibers[:closer], :alive?
      assert_predicate fibers[:reader], :alive?
      # Closes with users still work.
      a, b = IO.pipe
      t = Thread.new { a.read(1) rescue $! }
      Thread.pass until t.status == "sleep"
      a.close
      assert_kind_of IOError, t.value
      w.close
      b.close
    RUBY
  end
end
