# frozen_string_literal: false
require 'test/unit'
require 'timeout'
require 'io/nonblock'
require_relative 'uring_test_helper'

# Process::Handle under IO::Uring::Scheduler: #process_open adopts every
# handle with a pidfd, and #process_wait waits on it with IORING_OP_WAITID.
class TestIOUringProcessHandle < Test::Unit::TestCase
  include IOUringTestHelper

  # Records what reaches #process_wait (a subclass made once io/uring is
  # loaded: builds without it skip in setup).
  module RecordWaits
    attr_reader :waited

    def process_wait(pid, flags)
      (@waited ||= []) << pid
      super
    end
  end

  def recording_scheduler
    @recording ||= Class.new(IO::Uring::Scheduler) { include RecordWaits }
  end

  def setup
    super
    omit "no pidfds here" unless Process::Handle.race_free?
  end

  def run_scheduler(klass = nil)
    scheduler = nil
    Thread.new do
      scheduler = (klass || IO::Uring::Scheduler).new
      Fiber.set_scheduler(scheduler)
      yield scheduler
    end.join(30) or flunk("the scheduler thread hung")
    scheduler
  end

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def test_adopted_and_waited_with_waitid
    h = status = nil
    s = run_scheduler(recording_scheduler) do
      Fiber.schedule do
        h = Process::Handle.spawn("sh", "-c", "sleep 0.2; exit 3")
        status = h.wait
      end
    end
    assert_predicate h, :adopted?
    assert_equal [h], s.waited
    assert_equal 3, status.exitstatus
    assert_same status, h.status
  ensure
    h&.close
  end

  # 20 children waited at once: they overlap, and no thread is started.
  def test_twenty_concurrent_children
    handles = []
    threads = nil
    before = Thread.list.size
    t0 = now
    run_scheduler do
      20.times do
        Fiber.schedule do
          h = Process::Handle.spawn("sleep", "0.5")
          handles << h
          h.wait
        end
      end
      Fiber.schedule { sleep 0.2; threads = Thread.list.size }
    end
    elapsed = now - t0
    assert_equal 20, handles.size
    assert handles.all? { |h| h.status&.success? }
    assert_operator elapsed, :<, 2.5, "the waits must overlap (20 x 0.5 s)"
    assert_operator threads, :<=, before + 1, "the scheduler's thread only: no waiter threads"
  ensure
    handles.each(&:close)
  end

  def test_signal_death_and_fork
    statuses = []
    run_scheduler do
      Fiber.schedule do
        h = Process::Handle.spawn("sleep", "5")
        h.kill(:KILL)
        statuses << h.wait
        h.close
        f = Process::Handle.fork { exit!(7) }
        statuses << f.wait
        f.close
      end
    end
    assert_predicate statuses[0], :signaled?
    assert_equal Signal.list["KILL"], statuses[0].termsig
    assert_equal 7, statuses[1].exitstatus
  end

  # Interrupted waits cancel their WAITID and leave the child waitable.
  def test_timeout_and_fiber_raise_during_a_wait
    h = nil
    out = []
    run_scheduler do |s|
      waiter = Fiber.schedule do
        h = Process::Handle.spawn("sleep", "5")
        begin
          Timeout.timeout(0.05) { h.wait }
        rescue Timeout::Error
          out << :timeout
        end
        begin
          h.wait
        rescue RuntimeError => e
          out << e.message
        end
        h.kill(:TERM)
        out << h.wait.termsig
      end
      Fiber.schedule { sleep 0.2; waiter.raise(RuntimeError, "raised") }
    end
    assert_equal [:timeout, "raised", Signal.list["TERM"]], out
  ensure
    h&.close
  end

  def test_io_close_interrupts_the_wait
    h = nil
    out = []
    run_scheduler do
      Fiber.schedule do
        h = Process::Handle.spawn("sleep", "5")
        h.wait
      rescue IOError => e
        out << e.class
      end
      Fiber.schedule { sleep 0.05; h.close }
    end
    assert_equal [IOError], out
    # Closed, not reaped: the process is still there to be dealt with.
    Process.kill(:KILL, h.pid)
    Process.wait(h.pid)
  end

  # A pidfd made non-blocking completes WAITID at once without a process:
  # the scheduler must fall back to a poll, not spin or return early.
  def test_nonblocking_pidfd
    h = status = nil
    run_scheduler do
      Fiber.schedule do
        h = Process::Handle.spawn("sh", "-c", "sleep 0.1; exit 6")
        h.to_io.nonblock = true
        status = h.wait
      end
    end
    assert_equal 6, status.exitstatus
  ensure
    h&.close
  end

  # Another thread reaps the child by pid while a fiber waits on the
  # handle: the WAITID ends with ECHILD, and the status is recovered
  # (PIDFD_GET_INFO, Linux 6.15) or reported as Errno::ECHILD.
  def test_status_stolen_while_waiting
    h = result = nil
    run_scheduler do
      Fiber.schedule do
        h = Process::Handle.spawn("sh", "-c", "sleep 0.2; exit 5")
        thief = Thread.new { Process.wait(h.pid) rescue Errno::ECHILD }
        result = begin
          h.wait
        rescue Errno::ECHILD => e
          e
        end
        thief.join
      end
    end
    if result.is_a?(Process::Status)
      assert_equal 5, result.exitstatus
    else
      assert_kind_of Errno::ECHILD, result
    end
  ensure
    h&.close
  end

  # #process_wait(pid) waits through a pidfd: when another thread reaps
  # the child first, the fiber gets ECHILD (as waitpid(2) would) at once,
  # and never reaps or waits for a process that reused the pid.
  def test_pid_wait_when_another_thread_reaps
    pid = Process.spawn("sleep", "0.2")
    result = nil
    t0 = now
    run_scheduler do
      Fiber.schedule do
        thief = Thread.new { Process.waitpid(-1) rescue Errno::ECHILD }
        result = begin
          Process.wait(pid)
        rescue Errno::ECHILD => e
          e
        end
        thief.join
      end
    end
    assert_operator now - t0, :<, 2
    # Either the fiber or the thread reaped it; never both, never a hang.
    assert(result == pid || result.is_a?(Errno::ECHILD), result.inspect)
  ensure
    Process.wait(pid) rescue nil
  end

  def test_pid_wait_of_a_gone_process_is_echild
    result = nil
    run_scheduler do
      Fiber.schedule do
        result = Process::Status.wait(2**22 - 7)
      end
    end
    assert_equal(-1, result.pid)
  end

  def test_wait_any_and_waitall_unchanged
    pids = 3.times.map { |i| Process.spawn("sh", "-c", "exit #{i}") }
    h = nil
    all = nil
    run_scheduler do
      Fiber.schedule do
        h = Process::Handle.spawn("sh", "-c", "sleep 0.1; exit 9")
        all = Process.waitall
      end
    end
    assert_equal pids.sort, (all.map(&:first) - [h.pid]).sort
    # waitall reaped the handle's child too: the handle recovers its status
    # (Linux 6.15) or reports ECHILD.
    begin
      assert_equal 9, h.wait.exitstatus
    rescue Errno::ECHILD
    end
  ensure
    h&.close
  end

  # Closing the scheduler leaves adopted children alone.
  def test_scheduler_close_leaves_children
    h = nil
    run_scheduler do |s|
      Fiber.schedule { h = Process::Handle.spawn("sleep", "5") }
    end
    assert_predicate h, :adopted?
    assert_predicate h, :alive?
    h.kill(:TERM)
    assert_equal Signal.list["TERM"], h.wait.termsig
  ensure
    h&.close
  end

  def test_process_open_type_check
    s = IO::Uring::Scheduler.new
    assert_raise(TypeError) { s.process_open(Process.pid) }
  ensure
    s&.close
  end
end
