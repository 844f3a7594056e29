# frozen_string_literal: false
require 'test/unit'
require_relative 'uring_test_helper'

# fork under IO::Uring::Scheduler: the child drops the parent's ring
# (#process_fork) and gets a scheduler with a ring of its own.
class TestIOUringProcessFork < Test::Unit::TestCase
  include IOUringTestHelper

  def setup
    omit "fork is not available" unless Process.respond_to?(:fork)
    super
  end

  # How many descriptors of the process are io_urings, and eventfds.
  def self.kernel_objects
    links = Dir.children("/proc/self/fd").filter_map do |fd|
      File.readlink("/proc/self/fd/#{fd}")
    rescue Errno::ENOENT
      nil
    end
    [links.count("anon_inode:[io_uring]"), links.count("anon_inode:[eventfd]")]
  end

  # What a child should hold when its parent holds `parent`: one io_uring,
  # its new scheduler's (the parent's scheduler's ring is dropped), and as
  # many eventfds as the parent (the new scheduler's in place of the old
  # one's).
  def self.child_expects(parent)
    [1, parent[1]]
  end

  def run_scheduler(timeout: 60, &block)
    Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      block.call(Fiber.scheduler)
    end.join(timeout) or flunk("the scheduler thread hung")
  end

  # The parent has a read and a sleep in flight when it forks: it completes
  # them, and the child, with a new scheduler, never runs those fibers.
  def test_fork_with_operations_in_flight
    r, w = IO.pipe
    log_r, log_w = IO.pipe
    child_report = nil
    run_scheduler do |parent_scheduler|
      Fiber.schedule { log_w << "read #{r.read(5)} in #{Process.pid}\n" }
      Fiber.schedule { sleep 0.02; log_w << "slept in #{Process.pid}\n" }
      Fiber.schedule do
        cr, cw = IO.pipe
        pid = fork do
          cr.close
          child = Fiber.scheduler
          cw << [child.class, child.equal?(parent_scheduler), parent_scheduler.closed?,
                 Fiber.current.blocking?].inspect
          Fiber.schedule { sleep 0.01; cw << " child fiber ran" }
        end
        cw.close
        child_report = cr.read
        cr.close
        Process.wait(pid)
        w << "hello"
      end
    end
    log_w.close
    assert_equal "[IO::Uring::Scheduler, false, true, true] child fiber ran", child_report
    assert_equal ["read hello in #{Process.pid}", "slept in #{Process.pid}"],
                 log_r.read.lines.map(&:chomp).sort
  ensure
    [r, w, log_r, log_w].each { |io| io&.close }
  end

  def test_child_holds_only_its_own_ring
    report = nil
    parent = nil
    run_scheduler do
      Fiber.schedule do
        parent = self.class.kernel_objects
        r, w = IO.pipe
        pid = fork { r.close; w << self.class.kernel_objects.inspect }
        w.close
        report = r.read
        r.close
        Process.wait(pid)
      end
    end
    assert_operator parent[0], :>=, 1
    assert_equal self.class.child_expects(parent).inspect, report,
                 "the child's io_urings and eventfds"
  end

  def test_process_fork_in_the_parent_is_refused
    run_scheduler do |scheduler|
      assert_raise_with_message(RuntimeError, /forked child/) { scheduler.process_fork }
      refute_predicate scheduler, :closed?
    end
  end

  # 1,000 forks in a row while the parent keeps a read in flight; every
  # child checks the io_urings and eventfds it holds (child_expects).
  def test_thousand_forks
    r, w = IO.pipe
    statuses = []
    read = nil
    run_scheduler(timeout: 600) do # a loaded machine forks slowly
      Fiber.schedule { read = r.read(2) }
      Fiber.schedule do
        expected = self.class.child_expects(self.class.kernel_objects)
        1000.times do
          pid = fork { exit!(self.class.kernel_objects == expected ? 0 : 1) }
          _, status = Process.wait2(pid)
          statuses << status.exitstatus
        end
        w << "ok"
      end
    end
    assert_equal "ok", read
    assert_equal [0] * 1000, statuses
  ensure
    r&.close
    w&.close
  end
end
