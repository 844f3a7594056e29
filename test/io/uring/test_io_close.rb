# frozen_string_literal: false
require 'test/unit'
require 'socket'
require_relative 'uring_test_helper'

# IO#close under IO::Uring::Scheduler: IORING_OP_CLOSE through #io_close,
# and operations in flight cancelled by #fiber_interrupt.
class TestIOUringIOClose < Test::Unit::TestCase
  include IOUringTestHelper

  # Counts the descriptors the scheduler closes.
  module CountCloses
    attr_reader :closes

    def io_close(fd)
      (@closes ||= []) << fd
      super
    end
  end

  def run_scheduler(&block)
    scheduler = nil
    Thread.new do
      scheduler = IO::Uring::Scheduler.new.extend(CountCloses)
      Fiber.set_scheduler(scheduler)
      block.call(scheduler)
    end.join(30) or flunk("the scheduler thread hung")
    scheduler
  end

  # A reader with no reader end left: the kernel has no read in flight.
  def assert_no_reader(w)
    assert_raise(Errno::EPIPE) { w.write_nonblock("x") }
  end

  def test_io_close_uses_the_hook
    fds = nil
    scheduler = run_scheduler do
      Fiber.schedule do
        r, w = IO.pipe
        fds = [r.fileno, w.fileno]
        r.close
        w.close
      end
    end
    assert_equal fds, scheduler.closes
  end

  def test_io_close_results
    results = nil
    run_scheduler do |scheduler|
      Fiber.schedule do
        r, w = IO.pipe
        results = [scheduler.io_close(r.fileno), scheduler.io_close(r.fileno)]
        w.close
        Fiber.blocking { r.close rescue nil } # r's descriptor is gone already
      end
    end
    assert_equal [true, -Errno::EBADF::Errno], results
  end

  # The close races a read the kernel holds: the read is cancelled before
  # the descriptor is released, and a pipe opened right after, given the
  # same number, never sees the old read.
  def test_close_cancels_read_in_flight
    r, w = IO.pipe
    old_fd = r.fileno
    error = fresh = nil
    run_scheduler do
      Fiber.schedule do
        r.read(5)
      rescue IOError => error
      end
      Fiber.schedule do
        r.close
        assert_no_reader(w)
        r2, w2 = IO.pipe
        w2.write("fresh")
        fresh = [r2.fileno, r2.read(5)]
        r2.close
        w2.close
      end
    end
    assert_kind_of IOError, error
    assert_match(/closed/, error.message)
    assert_equal [old_fd, "fresh"], fresh
  ensure
    w&.close
  end

  # The thread's root fiber closes the IO: the scheduler cannot run until
  # the close returns, so #fiber_interrupt has cancelled the read already.
  def test_close_by_root_fiber_with_read_in_flight
    r, w = IO.pipe
    error = nil
    run_scheduler do
      Fiber.schedule do
        r.read(5)
      rescue IOError => error
      end
      r.close
      assert_no_reader(w)
    end
    assert_kind_of IOError, error
  ensure
    w&.close
  end

  # IO#close from another thread does not wait for the fiber (see
  # Fiber::Scheduler#fiber_interrupt): the scheduler's thread cancels the
  # read when it gets to it, and the pipe's read end is released once the
  # cancelled read, which held it, completes.
  def test_close_from_another_thread
    r, w = IO.pipe
    error = nil
    reading = false
    thread = Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      Fiber.schedule do
        reading = true
        r.read(5)
      rescue IOError => error
      end
    end
    Thread.pass until reading && thread.status == "sleep" # in io_uring_enter
    r.close
    thread.join(30) or flunk("the scheduler thread hung")
    assert_no_reader(w)
    assert_kind_of IOError, error
  ensure
    w&.close
  end

  def test_close_interrupts_writer_and_io_wait
    r, w = IO.pipe
    r2, w2 = IO.pipe
    errors = []
    run_scheduler do
      Fiber.schedule do
        w.write("x" * 1_000_000) # more than the pipe holds
      rescue IOError => e
        errors << [:write, e.class]
      end
      Fiber.schedule do
        r2.wait_readable
      rescue IOError => e
        errors << [:wait, e.class]
      end
      Fiber.schedule do
        w.close
        r2.close
      end
    end
    assert_equal [[:wait, IOError], [:write, IOError]], errors.sort
  ensure
    [r, w, r2, w2].each { |io| io&.close }
  end

  def test_socket_close_cancels_recv
    a, b = UNIXSocket.pair
    error = nil
    run_scheduler do
      Fiber.schedule do
        a.recv(10)
      rescue IOError => error
      end
      Fiber.schedule { a.close }
    end
    assert_kind_of IOError, error
    assert_equal "", b.read # the peer sees end of file: nobody reads a
  ensure
    b&.close
  end

  def test_thousands_of_closes_in_flight
    n = [2000, (Process.getrlimit(:NOFILE)[0] - 100) / 2].min
    pipes = Array.new(n) { IO.pipe }
    errors = 0
    scheduler = run_scheduler do
      pipes.each do |r, _|
        Fiber.schedule do
          r.read(1)
        rescue IOError
          errors += 1
        end
      end
      Fiber.schedule do
        pipes.each { |r, w| r.close; w.close }
      end
    end
    assert_equal n, errors
    assert_equal 2 * n, scheduler.closes.size
    assert pipes.flatten.all?(&:closed?)
  ensure
    pipes&.flatten&.each(&:close)
  end

  def test_fiber_interrupt_leaves_other_fibers_alone
    r, w = IO.pipe
    result = nil
    run_scheduler do |scheduler|
      Fiber.schedule { result = r.read(5) }
      Fiber.schedule do
        sleeper = Fiber.schedule { sleep 0.01 }
        scheduler.fiber_interrupt(sleeper, IOError.new("not in an I/O hook"))
        w.write("still")
      end
    end
    assert_equal "still", result
  ensure
    r&.close
    w&.close
  end

  def io_uring_fds
    Dir.children("/proc/self/fd").select do |fd|
      (File.readlink("/proc/self/fd/#{fd}") rescue nil) == "anon_inode:[io_uring]"
    end.map(&:to_i)
  end

  # IORING_OP_CLOSE refuses io_uring descriptors (EBADF), which close(2)
  # takes: IO#close raised and left the descriptor open.
  def test_close_of_an_io_uring_descriptor
    holder = IO::Uring::Scheduler.new
    io = IO.for_fd(holder_fd = io_uring_fds.first, autoclose: false).dup
    fd = io.fileno
    error = :unset
    run_scheduler do
      Fiber.schedule do
        io.close
        error = nil
      rescue => error
      end
    end
    assert_nil error
    assert_predicate io, :closed?
    assert_not_include io_uring_fds, fd
    assert_include io_uring_fds, holder_fd
  ensure
    holder&.close
  end
  class Interrupted < StandardError; end

  # Fiber#raise reaching a fiber while its IO#close waits for
  # IORING_OP_CLOSE: the close completes, then the exception propagates
  # from IO#close, as a Thread#raise pending during close(2) does in stock
  # ruby.  The IO is closed and its descriptor released; an ensure that
  # closes several IOs in a row must expect the exception there.
  def test_fiber_raise_during_close
    r, w = IO.pipe
    fd = r.fileno
    error = in_close = nil
    run_scheduler do |scheduler|
      closer = Fiber.schedule do
        in_close = true
        r.close
        in_close = false
      rescue Interrupted => error
      end
      assert_equal true, in_close, "the closer waits for its CQE"
      Fiber.schedule { closer.raise(Interrupted) }
    end
    assert_kind_of Interrupted, error
    assert_equal true, in_close, "raised from IO#close"
    assert_predicate r, :closed?
    assert_raise(Errno::EBADF) { IO.for_fd(fd, autoclose: false) }
    assert_no_reader(w)
  ensure
    w&.close
  end
end
