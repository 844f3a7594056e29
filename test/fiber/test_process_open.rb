# frozen_string_literal: true
require 'test/unit'
require_relative 'scheduler'

# Fiber::Scheduler#process_open: a scheduler is offered every
# Process::Handle its fibers create; adopted handles come to #process_wait.
class TestFiberProcessOpen < Test::Unit::TestCase
  # Adopts every handle and waits for it on the pidfd with #io_wait.
  class AdoptingScheduler < Scheduler
    attr_reader :opened, :waited

    def initialize(...)
      super
      @opened = []
      @waited = []
    end

    def process_open(handle)
      @opened << handle
      true
    end

    def process_wait(pid, flags)
      return super unless pid.is_a?(Process::Handle)
      @waited << [pid, flags]
      # (This scheduler's #io_wait takes one fiber per IO.)
      Thread.new { IO.select([pid.to_io]) }.join
      pid.wait_nonblock
    end
  end

  # Offered the handles, adopts none: a handle reaching its #process_wait
  # would be recorded there all the same.
  class DecliningScheduler < AdoptingScheduler
    def process_open(handle)
      super
      false
    end
  end

  class RaisingScheduler < Scheduler
    def process_open(handle)
      raise ArgumentError, "process_open failed"
    end
  end

  # Returns early: core must wait on the pidfd itself, not spin.
  class EarlyScheduler < AdoptingScheduler
    def process_wait(pid, flags)
      return super unless pid.is_a?(Process::Handle)
      @waited << [pid, flags]
      nil
    end
  end

  def setup
    omit "no pidfds here" unless Process::Handle.race_free?
  end

  def run_with(scheduler_class)
    scheduler = nil
    done = false
    Thread.new do
      scheduler = scheduler_class.new
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        yield scheduler
        done = true
      end
    end.join(10) or flunk("the scheduler thread hung")
    assert done, "the scheduled block did not finish"
    scheduler
  end

  def test_adopted_handle_comes_to_process_wait
    h = status = nil
    s = run_with(AdoptingScheduler) do
      h = Process::Handle.spawn("sh", "-c", "sleep 0.2; exit 3")
      status = h.wait
    end
    assert_equal [h], s.opened
    assert_predicate h, :adopted?
    assert_equal [[h, 0]], s.waited
    assert_equal 3, status.exitstatus
    assert_same status, h.wait
  ensure
    h&.close
  end

  def test_every_constructor_offers_the_handle
    handles = []
    s = run_with(AdoptingScheduler) do
      handles << Process::Handle.spawn("true")
      handles << Process::Handle.fork { exit!(0) }
      child = Process.spawn("sleep", "5")
      handles << Process::Handle.open(child)
      handles.last.kill(:KILL)
      handles.each(&:wait)
    end
    assert_equal handles, s.opened
    assert handles.all?(&:adopted?)
  ensure
    handles.each(&:close)
  end

  def test_process_wait_by_handle_through_process_wait_and_status_wait
    h = pid = st = nil
    s = run_with(AdoptingScheduler) do
      h = Process::Handle.spawn("sh", "-c", "sleep 0.2; exit 4")
      pid = Process.wait(h)
      st = $?
    end
    assert_equal h.pid, pid
    assert_equal 4, st.exitstatus
    assert_equal 1, s.waited.size
  ensure
    h&.close
  end

  def test_timed_wait_goes_through_io_wait_not_process_wait
    h = first = nil
    s = run_with(AdoptingScheduler) do
      h = Process::Handle.spawn("sleep", "5")
      first = h.wait(0.05)
      h.kill(:KILL)
      h.wait(5)
    end
    assert_nil first
    assert_equal [], s.waited
    assert_predicate h.status, :signaled?
  ensure
    h&.close
  end

  def test_declined_handle_is_waited_with_io_wait
    h = status = nil
    s = run_with(DecliningScheduler) do
      h = Process::Handle.spawn("sh", "-c", "exit 5")
      status = h.wait
    end
    assert_equal [h], s.opened
    assert_not_predicate h, :adopted?
    assert_equal [], s.waited, "#process_wait must never see a handle it did not adopt"
    assert_equal 5, status.exitstatus
  ensure
    h&.close
  end

  def test_scheduler_without_the_hook
    h = status = nil
    run_with(Scheduler) do
      h = Process::Handle.spawn("sh", "-c", "exit 6")
      status = h.wait
    end
    assert_not_predicate h, :adopted?
    assert_equal 6, status.exitstatus
  ensure
    h&.close
  end

  def test_hook_returning_early_leaves_the_wait_to_core
    h = status = nil
    s = run_with(EarlyScheduler) do
      h = Process::Handle.spawn("sh", "-c", "sleep 0.3; exit 2")
      status = h.wait
    end
    assert_equal 1, s.waited.size, "the hook is called once per wait"
    assert_equal 2, status.exitstatus
  ensure
    h&.close
  end

  # The child exists whatever the hook does: the error reaches the caller
  # and the handle nobody received is detached, so the child is reaped when
  # it exits and its pidfd closed.
  def test_raising_hook
    error = nil
    run_with(RaisingScheduler) do
      Process::Handle.spawn("sh", "-c", "sleep 0.1")
    rescue ArgumentError => e
      error = e
    end
    assert_equal "process_open failed", error.message
    assert_equal 1, children.size, "the child runs on"
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    sleep 0.05 until children.empty? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    assert_equal [], children, "reaped without anyone waiting"
    assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
    open_pidfds = ObjectSpace.each_object(IO).count { |io| !io.closed? && io.inspect.start_with?("#<IO:pidfd:") }
    assert_equal 0, open_pidfds, "the orphan's pidfd is closed once it is reaped"
  end

  def test_many_fibers_one_handle
    h = s = nil
    statuses = []
    Thread.new do
      s = AdoptingScheduler.new
      Fiber.set_scheduler(s)
      Fiber.schedule { h = Process::Handle.spawn("sh", "-c", "sleep 0.3; exit 9") }
      # (This scheduler's Fiber.schedule switches to the new fiber: each
      # is scheduled from the thread's fiber.)
      6.times { Fiber.schedule { statuses << h.wait } }
    end.join(10) or flunk("the scheduler thread hung")
    assert_equal 6, statuses.size
    statuses.each { |st| assert_same statuses.first, st }
    assert_equal 9, statuses.first.exitstatus
    assert_equal [h], s.opened
    assert_operator s.waited.size, :>=, 1
  ensure
    h&.close
  end

  # This process's children, zombies included.
  def children
    Dir.children("/proc/self/task").flat_map do |tid|
      File.read("/proc/self/task/#{tid}/children").split.map(&:to_i)
    rescue Errno::ENOENT
      []
    end.uniq
  end
end
