# frozen_string_literal: true
require 'test/unit'
require 'tempfile'
require_relative 'scheduler'

# fork under a fiber scheduler: the child starts without the parent's
# scheduler, its forking fiber blocking, unless Fiber::Scheduler#process_fork
# gives it a new scheduler.
class TestFiberProcessFork < Test::Unit::TestCase
  # Gives a forked child a scheduler of its own.
  class ForkScheduler < Scheduler
    def process_fork
      @urgent.each(&:close) # the parent's wake-up pipe: ours to close here
      @urgent = nil
      ForkScheduler.new
    end
  end

  class RaisingScheduler < Scheduler
    def process_fork
      raise "process_fork failed"
    end
  end

  def setup
    omit "fork is not available" unless Process.respond_to?(:fork)
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

  # Runs the block in a fiber of a new thread's scheduler.
  def in_scheduler(scheduler_class = Scheduler, &block)
    Thread.new do
      Fiber.set_scheduler(scheduler_class.new)
      Fiber.schedule(&block)
    end.join
  end

  # Forks with the block as the child; returns what the child wrote to its
  # pipe, and its status.
  def fork_report(&child)
    r, w = IO.pipe
    pid = fork do
      r.close
      child.call(w) # w closes when the child exits, after its fibers
    end
    w.close
    report = r.read
    _, status = Process.wait2(pid)
    [report, status]
  ensure
    r&.close
    w&.close
  end

  def state
    "scheduler=#{Fiber.scheduler.class} blocking=#{Fiber.current.blocking?}"
  end

  def test_child_starts_without_scheduler
    result = nil
    in_scheduler { result = fork_report { |w| w << state } }
    assert_equal("scheduler=NilClass blocking=true", result[0])
    assert_predicate(result[1], :success?)
  end

  def test_process_fork_method
    r, w = IO.pipe
    in_scheduler(ForkScheduler) do
      pid = Process.fork { r.close; w << state }
      w.close
      Process.wait(pid)
    end
    assert_equal("scheduler=TestFiberProcessFork::ForkScheduler blocking=true", r.read)
  ensure
    r&.close
    w&.close
  end

  # Forked inside Fiber.blocking: the child's root fiber stays blocking
  # once the block is left.
  def test_fork_inside_fiber_blocking
    r, w = IO.pipe
    in_scheduler(ForkScheduler) do
      pid = Fiber.blocking { fork }
      if pid.nil?
        r.close
        w << state
        exit!(0)
      end
      w.close
      Process.wait(pid)
    end
    assert_equal("scheduler=TestFiberProcessFork::ForkScheduler blocking=true", r.read)
  ensure
    r&.close
    w&.close
  end

  def test_fork_from_blocking_fiber_of_scheduler_thread
    result = nil
    Thread.new do
      Fiber.set_scheduler(ForkScheduler.new)
      result = fork_report { |w| w << state }
    end.join
    assert_equal("scheduler=TestFiberProcessFork::ForkScheduler blocking=true", result[0])
  end

  def test_hook_gives_child_a_scheduler
    result = nil
    in_scheduler(ForkScheduler) do
      result = fork_report do |w|
        w << state
        # The child's fibers run, and interleave, under the new scheduler:
        Fiber.schedule { sleep 0.02; w << " second" }
        Fiber.schedule { w << " first" }
      end
    end
    assert_equal("scheduler=TestFiberProcessFork::ForkScheduler blocking=true first second", result[0])
    assert_predicate(result[1], :success?)
  end

  def test_hook_runs_only_in_the_child
    calls = Class.new(Scheduler) do
      def process_fork
        self.class::CALLS << Process.pid
        nil
      end
    end
    calls.const_set(:CALLS, [])
    result = nil
    in_scheduler(calls) do
      result = fork_report { |w| w << calls::CALLS.inspect << " " << Process.pid.to_s }
    end
    called_in, child = result[0].split(" ")
    assert_equal("[#{child}]", called_in)
    assert_equal([], calls::CALLS, "process_fork ran in the parent")
  end

  # A fiber of the parent that is waiting when the child is forked never runs
  # in the child.
  def test_parent_fibers_do_not_run_in_child
    r, w = IO.pipe
    child = nil
    Thread.new do
      Fiber.set_scheduler(ForkScheduler.new)
      Fiber.schedule { sleep 0.05; w << "fiber:#{Process.pid}\n" }
      Fiber.schedule { child = fork_report { |cw| cw << Process.pid.to_s; sleep 0.1 } }
    end.join
    w.close
    assert_equal(["fiber:#{Process.pid}"], r.read.lines.map(&:chomp))
    assert_predicate(child[1], :success?)
  ensure
    r&.close
    w&.close
  end

  def test_hook_raising_in_fork_block
    in_scheduler(RaisingScheduler) do
      status = nil
      assert_in_out_err_fork(/process_fork failed/) do
        pid = fork { exit!(0) } # the block never runs
        _, status = Process.wait2(pid)
      end
      refute_predicate(status, :success?)
    end
  end

  def test_hook_raising_without_block
    result = nil
    in_scheduler(RaisingScheduler) do
      r, w = IO.pipe
      begin
        pid = fork
      rescue RuntimeError => error
        w << error.message # in the child
        exit!(0)
      end
      w.close
      result = r.read
      Process.wait(pid)
    ensure
      r&.close
      w&.close
    end
    assert_equal("process_fork failed", result)
  end

  def test_nested_forks
    result = nil
    in_scheduler(ForkScheduler) do
      result = fork_report do |w|
        grandchild = fork_report { |gw| gw << state }
        w << grandchild[0]
      end
    end
    assert_equal("scheduler=TestFiberProcessFork::ForkScheduler blocking=true", result[0])
  end

  def test_popen_dash
    outputs = [Scheduler, ForkScheduler].map do |scheduler_class|
      output = nil
      in_scheduler(scheduler_class) do
        output = IO.popen("-") do |io|
          if io
            io.read
          else
            print Fiber.scheduler.class
          end
        end
      end
      output
    end
    assert_equal(["NilClass", "TestFiberProcessFork::ForkScheduler"], outputs)
  end

  def test_daemon
    Tempfile.create("daemon") do |file|
      pid = fork do
        in_scheduler(ForkScheduler) do
          Process.daemon(true, true)
          File.write(file.path, "#{state} #{Process.pid}")
        end
        exit!(0)
      end
      Process.wait(pid)
      content = ""
      50.times do
        content = File.read(file.path)
        break unless content.empty?
        sleep 0.1
      end
      assert_match(/\Ascheduler=TestFiberProcessFork::ForkScheduler blocking=true \d+\z/, content)
    end
  end

  private

  # Runs the block with $stderr redirected for the forked child, and checks
  # what the child printed.
  def assert_in_out_err_fork(pattern)
    Tempfile.create("stderr") do |log|
      saved = $stderr.dup
      $stderr.reopen(log)
      begin
        yield
      ensure
        $stderr.reopen(saved)
        saved.close
      end
      assert_match(pattern, File.read(log.path))
    end
  end
end
