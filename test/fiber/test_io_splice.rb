# frozen_string_literal: true
require 'test/unit'
require 'socket'
require 'tempfile'
require 'stringio'
require_relative 'scheduler'

# IO.copy_stream through Fiber::Scheduler#io_splice: what the hook is given,
# what copy_stream makes of each kind of result, and IO#close of either end
# interrupting it.
class TestFiberIOSplice < Test::Unit::TestCase
  # Copies with read/write (the protocol is under test here, not the
  # kernel), records its calls, and returns the results it is told to first.
  class SpliceScheduler < Scheduler
    attr_reader :splices
    attr_accessor :results

    def initialize(...)
      super
      @splices = []
      @results = []
    end

    def io_splice(from, from_offset, to, to_offset, length)
      @splices << [from, from_offset, to, to_offset, length]
      if @results.empty?
        return nil if @results_done
        return copy(from, from_offset, length, to)
      end
      result = @results.shift
      result.respond_to?(:call) ? result.call(length) : result
    end

    # Once the results given are used up: nil, not copying.
    def results_done!
      @results_done = true
    end

    private

    def copy(from, from_offset, length, to)
      data = from_offset ? from.pread(length, from_offset) : from.readpartial(length)
      to.write(data)
      data.bytesize
    rescue EOFError
      0
    rescue SystemCallError => error
      -error.errno
    end
  end

  def setup
    @fds = open_fds
  end

  def teardown
    GC.start
    assert_equal(@fds, open_fds, "descriptors leaked")
  end

  # The descriptors of this process, but for the io_uring a native thread
  # makes for IO.copy_stream on first use and keeps while it lives.
  def open_fds
    Dir.children("/proc/self/fd").map(&:to_i).reject do |fd|
      File.readlink("/proc/self/fd/#{fd}") == "anon_inode:[io_uring]" rescue true
    end.sort
  end

  # Runs the block in a non-blocking fiber of a new scheduler, in a thread
  # of its own; raises here what the block raised there.
  def with_scheduler(scheduler_class = SpliceScheduler)
    scheduler = error = nil
    thread = Thread.new do
      scheduler = scheduler_class.new
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        yield scheduler
      rescue Exception => e
        error = e
      end
    end
    thread.join(30) or flunk("the scheduler thread hung")
    raise error if error
    scheduler
  ensure
    thread&.kill
  end

  # A fiber copying r to dw, and another closing `io` once the copier
  # waits; returns what the copier raised.
  def close_while_copying(r, dw, io)
    error = nil
    thread = Thread.new do
      Fiber.set_scheduler(SpliceScheduler.new)
      Fiber.schedule do
        IO.copy_stream(r, dw)
      rescue IOError => e
        error = e
      end
      Fiber.schedule { io.close }
    end
    thread.join(30) or flunk("the scheduler thread hung")
    error
  ensure
    thread&.kill
  end

  DATA = Random.new(42).bytes(300_000).freeze

  def binary_pipe
    IO.pipe.each(&:binmode)
  end

  # A pipe holding DATA, its write end closed.
  def data_pipe(data = DATA)
    r, w = binary_pipe
    writer = Thread.new do
      w.write(data)
    rescue Errno::EPIPE, IOError
      # the test stopped reading
    ensure
      w.close
    end
    [r, writer]
  end

  def test_copy_stream_goes_through_io_splice
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    scheduler = with_scheduler { copied = IO.copy_stream(r, dw) }
    dw.close
    assert_equal DATA.bytesize, copied
    assert_equal DATA, reader.value
    refute_empty scheduler.splices
    from, from_offset, to, to_offset, length = scheduler.splices.first
    assert_same r, from
    assert_nil from_offset
    assert_same dw, to
    assert_nil to_offset
    assert_operator length, :>, 0
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_length_bounds_every_call
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    scheduler = with_scheduler { copied = IO.copy_stream(r, dw, 100_001) }
    dw.close
    assert_equal 100_001, copied
    assert_equal DATA.byteslice(0, 100_001), reader.value
    lengths = scheduler.splices.map(&:last)
    assert_equal 100_001, lengths.first
    assert_operator lengths.sum, :>=, 100_001
    # the rest is still in the source
    assert_equal DATA.byteslice(100_001..), r.read
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_src_offset_is_passed_and_the_file_position_kept
    Tempfile.create("splice") do |f|
      f.write(DATA)
      f.flush
      f.rewind
      dr, dw = binary_pipe
      copied = nil
      scheduler = with_scheduler { copied = IO.copy_stream(f, dw, 1000, 5) }
      dw.close
      assert_equal 1000, copied
      assert_equal DATA.byteslice(5, 1000), dr.read
      assert_equal 5, scheduler.splices.first[1]
      assert_equal 0, f.pos
    ensure
      [dr, dw].each { |io| io&.close }
    end
  end

  def test_file_to_file_advances_both_positions
    Tempfile.create("splice-src") do |src|
      Tempfile.create("splice-dst") do |dst|
        src.write(DATA)
        src.rewind
        src.read(10)
        dst.write("head")
        copied = nil
        scheduler = with_scheduler { copied = IO.copy_stream(src, dst, 500) }
        assert_equal 500, copied
        refute_empty scheduler.splices
        assert_equal 510, src.pos
        assert_equal 504, dst.pos
        dst.flush
        assert_equal "head" + DATA.byteslice(10, 500), File.binread(dst.path)
      end
    end
  end

  # As copy_file_range(2) and sendfile(2) copy without a scheduler: a file
  # is copied up to the size it had when the copy started.
  def test_a_file_source_is_copied_up_to_its_size_at_the_start
    growing = Class.new(SpliceScheduler) do
      def io_splice(from, *rest)
        File.write(from.path, "more", mode: "ab") if splices.empty?
        super
      end
    end
    Tempfile.create("splice") do |f|
      f.write(DATA)
      f.flush
      f.rewind
      f.read(7)
      dr, dw = binary_pipe
      reader = Thread.new { dr.read }
      copied = nil
      scheduler = with_scheduler(growing) { copied = IO.copy_stream(f, dw) }
      dw.close
      assert_equal DATA.bytesize - 7, copied
      assert_equal DATA.byteslice(7..), reader.value
      assert_equal DATA.bytesize - 7, scheduler.splices.first.last
      assert_equal DATA.bytesize, f.pos
    ensure
      [dr, dw].each { |io| io&.close }
    end
  end

  def test_buffered_bytes_are_written_first
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    with_scheduler do
      first = r.getc # fills the read buffer
      r.ungetc(first)
      copied = IO.copy_stream(r, dw)
    end
    dw.close
    assert_equal DATA.bytesize, copied
    assert_equal DATA, reader.value
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_nil_falls_back_to_ruby
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    scheduler = with_scheduler do |s|
      s.results = [nil]
      s.results_done!
      copied = IO.copy_stream(r, dw)
    end
    dw.close
    assert_equal DATA.bytesize, copied
    assert_equal DATA, reader.value
    assert_equal 1, scheduler.splices.size
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_nil_after_a_partial_copy_continues_where_it_stopped
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    scheduler = with_scheduler do |s|
      # a hook copies from the descriptor, not through the IO's buffer
      s.results = [->(length) { dw.write(read_exactly(r, 777)) }, nil]
      s.results_done!
      copied = IO.copy_stream(r, dw, 200_000)
    end
    dw.close
    assert_equal 200_000, copied
    assert_equal DATA.byteslice(0, 200_000), reader.value
    assert_equal [200_000, 200_000 - 777], scheduler.splices.map(&:last)
    assert_equal DATA.byteslice(200_000..), r.read
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_zero_is_end_of_file
    r, writer = data_pipe
    dr, dw = binary_pipe
    copied = nil
    scheduler = with_scheduler do |s|
      s.results = [0]
      copied = IO.copy_stream(r, dw)
    end
    dw.close
    assert_equal 0, copied
    assert_equal "", dr.read
    assert_equal 1, scheduler.splices.size
    r.close
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_eagain_waits_with_io_wait_and_calls_again
    r, w = binary_pipe
    dr, dw = binary_pipe
    waits = []
    waiting = Class.new(SpliceScheduler) do
      # Only copy_stream's own waits count, not those of the hook's copy.
      define_method(:io_splice) do |*args|
        @in_hook = true
        super(*args)
      ensure
        @in_hook = false
      end
      define_method(:io_wait) do |io, events, timeout|
        waits << [io, events] unless @in_hook
        super(io, events, timeout)
      end
    end
    copied = nil
    writer = Thread.new { sleep 0.05; w.write("hello"); w.close }
    scheduler = with_scheduler(waiting) do |s|
      # The source is empty: the hook answers -EAGAIN, as a readiness-based
      # scheduler may, and copy_stream waits with #io_wait and calls again.
      s.results = [-Errno::EAGAIN::Errno]
      copied = IO.copy_stream(r, dw)
    end
    writer.join
    dw.close
    assert_equal 5, copied
    assert_equal "hello", dr.read
    assert_operator scheduler.splices.size, :>=, 2
    assert_include waits, [r, IO::READABLE]
    assert_include waits, [dw, IO::WRITABLE]
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_eagain_again_with_both_ends_ready_falls_back
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    scheduler = with_scheduler do |s|
      # -EAGAIN though both ends are ready (a hook that cannot make this
      # copy): after one wait and retry, copy_stream copies the rest itself.
      s.results = [-Errno::EAGAIN::Errno, -Errno::EAGAIN::Errno]
      s.results_done!
      copied = IO.copy_stream(r, dw)
    end
    dw.close
    assert_equal DATA.bytesize, copied
    assert_equal DATA, reader.value
    assert_equal 2, scheduler.splices.size
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_negative_errno_raises_as_the_ruby_loop_would
    [[Errno::EPIPE, "Broken pipe - write"], [Errno::ECONNRESET, "Connection reset by peer - read"]].each do |klass, message|
      r, w = IO.pipe
      dr, dw = binary_pipe
      error = nil
      with_scheduler do |s|
        s.results = [-klass::Errno]
        error = assert_raise(klass) { IO.copy_stream(r, dw) }
      end
      assert_equal message, error.message
    ensure
      [r, w, dr, dw].each { |io| io&.close }
    end
  end

  def test_negative_errno_matches_the_failure_without_the_hook
    expected = without_hook_error { |r, dw| IO.copy_stream(r, dw) }
    r, w, dr, dw = broken_destination
    error = nil
    with_scheduler { error = assert_raise(expected.class) { IO.copy_stream(r, dw) } }
    assert_equal expected.message, error.message
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_more_than_asked_is_an_error
    r, w = IO.pipe
    dr, dw = binary_pipe
    with_scheduler do |s|
      s.results = [->(length) { length + 1 }]
      error = assert_raise(RuntimeError) { IO.copy_stream(r, dw, 10) }
      assert_match(/io_splice copied 11 bytes, more than the 10 asked for/, error.message)
    end
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_hook_exception_propagates
    r, w = IO.pipe
    dr, dw = binary_pipe
    with_scheduler do |s|
      s.results = [->(length) { raise ArgumentError, "from the hook" }]
      assert_raise_with_message(ArgumentError, "from the hook") { IO.copy_stream(r, dw) }
    end
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_not_called_for_io_likes_blocking_fibers_or_pipe_offsets
    r, writer = data_pipe
    dr, dw = binary_pipe
    scheduler = with_scheduler do
      sio = StringIO.new("string")
      assert_equal 6, IO.copy_stream(sio, dw)
      assert_equal 5, IO.copy_stream(r, out = StringIO.new(+"".b), 5)
      assert_equal DATA.byteslice(0, 5), out.string
      assert_equal 5, Fiber.blocking { IO.copy_stream(r, dw, 5) }
      # pread on a pipe: Errno::ESPIPE from the ruby loop, as without the hook
      assert_raise(Errno::ESPIPE) { IO.copy_stream(r, dw, 5, 1) }
    end
    assert_empty scheduler.splices
    dw.close
    assert_equal "string" + DATA.byteslice(5, 5), dr.read
    r.close
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_without_the_hook_copy_stream_is_unchanged
    r, writer = data_pipe
    dr, dw = binary_pipe
    reader = Thread.new { dr.read }
    copied = nil
    with_scheduler(Scheduler) { copied = IO.copy_stream(r, dw) }
    dw.close
    assert_equal DATA.bytesize, copied
    assert_equal DATA, reader.value
    writer.join
  ensure
    [r, dr, dw].each { |io| io&.close }
  end

  def test_close_of_the_source_interrupts_io_splice
    r, w = binary_pipe
    dr, dw = binary_pipe
    error = close_while_copying(r, dw, r)
    assert_kind_of IOError, error
    assert_predicate r, :closed?
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_close_of_the_destination_interrupts_io_splice
    r, w = binary_pipe
    dr, dw = binary_pipe
    # The copier waits for the source; only the hook's registration with
    # the destination lets this close reach it.
    error = close_while_copying(r, dw, dw)
    assert_kind_of IOError, error
    assert_equal "stream closed in another thread", error.message
    assert_predicate dw, :closed?
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  private

  def read_exactly(io, length)
    data = +""
    data << io.sysread(length - data.bytesize) while data.bytesize < length
    data
  end

  # A pipe source with data and a destination pipe whose reader is gone.
  def broken_destination
    r, w = IO.pipe
    w.write("data")
    dr, dw = binary_pipe
    dr.close
    [r, w, dr, dw]
  end

  def without_hook_error
    r, w, dr, dw = broken_destination
    yield r, dw
    flunk "no error"
  rescue SystemCallError => e
    e
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end
end
