# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'tempfile'
require_relative 'uring_test_helper'

# Inline completion (ext/io/uring/inline.c): reads and writes of files and
# devices that the kernel can answer at once are made without the ring, so
# the fiber does not switch to the loop.  Seen from Ruby: a fiber that
# completes inline does not let a fiber scheduled after it run in between.
class TestIOUringInline < Test::Unit::TestCase
  include IOUringTestHelper

  def run_scheduler(&block)
    Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      block.call
    end.join(30) or flunk("the scheduler thread hung")
  end

  # The file system under +path+, from /proc/self/mounts (the longest
  # mount point that contains it).
  def fstype(path)
    path = File.realpath(path)
    File.readlines("/proc/self/mounts").map(&:split)
      .select { |_, point, _| path == point || path.start_with?(point.end_with?("/") ? point : "#{point}/") }
      .max_by { |_, point, _| point.size }&.at(2)
  rescue SystemCallError
    nil
  end

  # tmpfs (a /tmp in memory) refuses RWF_NOWAIT reads: they go to the ring.
  def omit_unless_nowait_reads(path)
    type = fstype(path)
    omit "#{type} refuses RWF_NOWAIT reads" if %w[tmpfs ramfs].include?(type)
  end

  # The order in which fiber A (I/O) and fiber B (no I/O, scheduled after
  # A) finish.
  def order_of(&io)
    log = []
    run_scheduler do
      Fiber.schedule { io.call; log << :io }
      Fiber.schedule { log << :other }
    end
    log
  end

  def test_writes_to_dev_null_complete_inline
    File.open(File::NULL, "w") do |null|
      null.sync = true
      assert_equal [:io, :other], order_of { 10.times { null.write("x" * 100) } }
    end
  end

  def test_reads_from_the_page_cache_complete_inline
    Tempfile.create("inline") do |f|
      omit_unless_nowait_reads(f.path)
      f.write("abcdefghij" * 100)
      f.flush
      f.rewind
      got = nil
      assert_equal [:io, :other], order_of { got = f.read(1000) }
      assert_equal "abcdefghij" * 100, got
      assert_equal 1000, f.pos
    end
  end

  def test_pread_inline_leaves_the_position
    Tempfile.create("inline") do |f|
      omit_unless_nowait_reads(f.path)
      f.write("0123456789")
      f.flush
      f.pos = 2
      got = nil
      assert_equal [:io, :other], order_of { got = f.pread(4, 5) }
      assert_equal "5678", got
      assert_equal 2, f.pos
    end
  end

  # Buffered writes to a regular file complete inline where the file
  # system takes RWF_NOWAIT (XFS, btrfs) and on the ring where it refuses
  # it (ext4, tmpfs): either way at the offset, the position unchanged.
  def test_file_writes_inline_or_on_the_ring
    Tempfile.create("inline") do |f|
      f.write("0123456789")
      f.flush
      f.pos = 2
      written = []
      order_of do
        written << f.pwrite("XY", 0)
        f.sync = true
        written << f.write("ab") << f.write("cd")
      end
      assert_equal [2, 2, 2], written
      assert_equal 6, f.pos
      assert_equal "XYabcd6789", File.binread(f.path)
    end
  end

  # Pipes and sockets stay on the ring, with bytes waiting or not: there
  # the batch costs less than a system call of each.
  def test_pipe_and_socket_reads_go_to_the_ring
    IO.pipe do |r, w|
      w.write("hello")
      got = nil
      assert_equal [:other, :io], order_of { got = r.read(5) }
      assert_equal "hello", got
    end
    UNIXSocket.pair do |a, b|
      a.write("ping")
      got = nil
      assert_equal [:other, :io], order_of { got = b.readpartial(4) }
      assert_equal "ping", got
    end
  end

  def test_empty_pipe_read_waits_on_the_ring
    IO.pipe do |r, w|
      log = []
      run_scheduler do
        Fiber.schedule { log << r.read(5) }
        Fiber.schedule { log << :other; w.write("hello") }
      end
      assert_equal [:other, "hello"], log
    end
  end

  # A fiber that never waits must still let the others run: once inline
  # completions have kept the thread for a millisecond, the next operation
  # goes to the ring and the loop takes a turn.
  def test_a_fiber_writing_inline_lets_others_run
    writes = 0
    seen = nil
    File.open(File::NULL, "w") do |null|
      null.sync = true
      run_scheduler do
        Fiber.schedule do
          t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          until seen || Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0 > 5
            null.write("x")
            writes += 1
          end
        end
        Fiber.schedule { seen = writes }
      end
    end
    assert_not_nil seen, "the other fiber never ran while one wrote for 5 s"
    assert_operator seen, :>=, 2, "the writes did not complete inline"
  end

  # Errors from an inline attempt are the errors of the same call without a
  # scheduler.
  def test_inline_errors_are_stock_errors
    File.open("/dev/full", "w") do |full|
      full.sync = true
      calls = [-> { full.write("x") }, -> { full.pwrite("x", 0) }]
      stock = calls.map { |c| c.call rescue [$!.class, $!.message] }
      errors = []
      run_scheduler { Fiber.schedule { calls.each { |c| errors << (c.call rescue [$!.class, $!.message]) } } }
      assert_equal stock, errors
      assert_equal [Errno::ENOSPC, Errno::ENOSPC], errors.map(&:first)
    end
  end

  # A descriptor number closed and reused for another kind of file: the
  # notes about the old one change nothing but the path taken.
  def test_reused_descriptor_number
    got = []
    run_scheduler do
      Fiber.schedule do
        r, w = IO.pipe
        w.write("one")
        got << r.read(3)
        fd = r.fileno
        r.close
        w.close
        Tempfile.create("inline") do |f|
          f.write("two")
          f.flush
          g = File.open(f.path)
          got << [g.fileno == fd, g.read]
          g.close
        end
      end
    end
    assert_equal "one", got[0]
    assert_equal "two", got[1][1]
  end
end
