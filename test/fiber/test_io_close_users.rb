# frozen_string_literal: true
require 'test/unit'
require_relative 'scheduler'

# IO#close and the users of its descriptor that cannot leave while the
# closer waits, on both series (3.4's patch 0001; master's "IO#close: do not
# wait for users that cannot leave").  Each close runs in a thread of its
# own, joined with a timeout, so a close that waits forever fails the test.
class TestFiberIOCloseUsers < Test::Unit::TestCase
  # Drops its fibers when its thread ends instead of running them, as a
  # scheduler that only releases its resources then does (IO::Uring's on
  # Thread#kill): a fiber left inside a hook never runs again.
  class AbandoningScheduler < Scheduler
    def scheduler_close
    end
  end

  def assert_closed_error(error)
    assert_kind_of(IOError, error)
    assert_match(/closed/, error.message)
  end

  # Runs the block in a thread and returns its value; fails if it does not
  # end within `seconds`.
  def within(seconds, what, &block)
    thread = Thread.new(&block)
    thread.join(seconds) or flunk("#{what} did not return")
    thread.value
  ensure
    thread&.kill
  end

  # The writer of a duplex IO (IO.popen "r+") is interrupted when the IO
  # closes, as the reader is: it no longer blocks the close until the
  # child drains the pipe.
  def test_close_interrupts_the_writer_of_a_duplex_io
    error = nil
    within(10, "IO#close of a duplex IO") do
      Fiber.set_scheduler(Scheduler.new)
      io = IO.popen(["cat"], "r+")
      Fiber.schedule do
        io.write("x" * 1_000_000) # cat echoes until both pipes are full
      rescue IOError => error
      end
      Fiber.schedule { io.close }
    end
    assert_closed_error(error)
  end

  # A thread killed while a fiber of its scheduler reads leaves that fiber
  # in its hook for good: a later close does not wait for it.
  def test_close_does_not_wait_for_a_killed_threads_fiber
    r, w = IO.pipe
    reading = Thread::Queue.new
    thread = Thread.new do
      Fiber.set_scheduler(AbandoningScheduler.new)
      Fiber.schedule do
        reading << true
        r.read
      end
      sleep
    end
    reading.pop
    Thread.pass until thread.status == "sleep"
    thread.kill.join(10) or flunk("the thread did not end")
    # The abandoned fiber's stack holds its entry in the IO's list of users:
    # a collection (and its fiber's stack reused) must not corrupt the close.
    thread = nil
    GC.start
    100.times { Fiber.new { }.resume }
    assert_nil(within(10, "IO#close after the reader's thread ended") { r.close })
    assert_predicate(r, :closed?)
  ensure
    r&.close
    w&.close
  end

  # The root fiber (blocking) closes an IO a fiber of its own scheduler
  # reads: the scheduler cannot run that fiber until the close returns, so
  # the close does not wait for it; the fiber raises when it runs.
  def test_blocking_closer_does_not_wait_for_its_own_schedulers_fiber
    r, w = IO.pipe
    error = nil
    result = within(10, "IO#close by the scheduler's blocking root fiber") do
      Fiber.set_scheduler(Scheduler.new)
      Fiber.schedule do
        r.read
      rescue IOError => error
      end
      r.close
      :closed
    end
    assert_equal(:closed, result)
    assert_closed_error(error)
  ensure
    r&.close
    w&.close
  end
end
