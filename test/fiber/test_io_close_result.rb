# frozen_string_literal: true
require 'test/unit'
require_relative 'scheduler'

# What IO#close makes of Fiber::Scheduler#io_close's result: true (the
# scheduler closed the descriptor), nil (Ruby closes it), or a negated
# errno (the scheduler released the descriptor and the close failed: IO#close
# raises what close(2) failing raises without a scheduler).
class TestFiberIOCloseResult < Test::Unit::TestCase
  class ResultScheduler < Scheduler
    attr_reader :closes
    attr_accessor :result

    def initialize(...)
      super
      @closes = []
      @result = true
    end

    # Closes the descriptor with close(2) (in a blocking fiber, so not
    # through this hook again), then answers what the test asked for.
    def io_close(descriptor)
      @closes << descriptor
      Fiber.blocking { IO.for_fd(descriptor.to_i, autoclose: true).close } unless @result.nil?
      @result
    end
  end

  # Runs the block in a non-blocking fiber under a ResultScheduler with
  # `result`, in a thread of its own; returns [scheduler, what it raised].
  def with_result(result)
    scheduler = error = nil
    thread = Thread.new do
      scheduler = ResultScheduler.new
      scheduler.result = result
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        yield
      rescue Exception => e
        error = e
      end
    end
    thread.join(10) or flunk("the scheduler thread hung")
    [scheduler, error]
  ensure
    thread&.kill
  end

  def fd_open?(fd)
    File.exist?("/proc/self/fd/#{fd}")
  end

  def setup
    omit "needs /proc/self/fd" unless File.directory?("/proc/self/fd")
  end

  # Closes a pipe's read end under a scheduler answering `result`: the hook
  # got its descriptor, the IO is closed and so is the descriptor.  Returns
  # what IO#close raised.
  def close_with_result(result)
    r, w = IO.pipe
    fd = r.fileno
    scheduler, error = with_result(result) { r.close }
    assert_equal [fd], scheduler.closes
    assert_predicate r, :closed?
    refute fd_open?(fd), "the descriptor was left open"
    error
  ensure
    w&.close
  end

  def test_true_means_the_scheduler_closed_it
    assert_nil close_with_result(true)
  end

  def test_nil_leaves_the_close_to_ruby
    assert_nil close_with_result(nil)
  end

  def test_negative_errno_raises_and_the_descriptor_is_released
    assert_kind_of Errno::EIO, close_with_result(-Errno::EIO::Errno)
  end

  def test_negative_errno_raises_what_close_raises_without_a_scheduler
    expected = nil
    File.open(__FILE__) do |f|
      # close(2) failing with EBADF: the descriptor closed behind Ruby's back.
      IO.for_fd(f.fileno, autoclose: true).close
      expected = assert_raise(Errno::EBADF) { f.close }
    end
    File.open(__FILE__) do |f|
      _, error = with_result(-Errno::EBADF::Errno) { f.close }
      assert_kind_of Errno::EBADF, error
      assert_equal expected.message, error.message
      assert_predicate f, :closed?
    end
  end
end
