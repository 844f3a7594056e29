# frozen_string_literal: false
require 'test/unit'
require 'timeout'
require 'socket'
require_relative 'uring_test_helper'

class TestIOUringScheduler < Test::Unit::TestCase
  include IOUringTestHelper

  # Run the block in a new thread under a fresh IO::Uring::Scheduler.
  def run_scheduler(&block)
    Thread.new do
      scheduler = IO::Uring::Scheduler.new
      Fiber.set_scheduler(scheduler)
      block.call(scheduler)
    end.join(30) or flunk("the scheduler thread hung")
  end

  def test_read_write_pipe
    result = nil
    IO.pipe do |r, w|
      run_scheduler do
        Fiber.schedule { result = r.read(11) }
        Fiber.schedule { w.write("hello"); sleep 0.01; w.write(" world") }
      end
    end
    assert_equal "hello world", result
  end

  def test_io_wait_timeout
    result = :unset
    IO.pipe do |r, w|
      run_scheduler do
        Fiber.schedule { result = r.wait_readable(0.05) }
      end
    end
    assert_nil result
  end

  def test_io_wait_ready
    result = nil
    IO.pipe do |r, w|
      w.write("x")
      run_scheduler do
        Fiber.schedule { result = r.wait_readable(1) }
      end
    end
    assert_not_nil result
  end

  # The sleeps overlap: the later, shorter one ends first (one after the
  # other, the order would be reversed).
  def test_sleep_runs_concurrently
    order = []
    run_scheduler do
      Fiber.schedule { sleep 0.2; order << :slow }
      Fiber.schedule { sleep 0.1; order << :fast }
    end
    assert_equal [:fast, :slow], order
  end

  def test_timeout_cancels_read_in_flight
    IO.pipe do |r, w|
      error = nil
      run_scheduler do
        Fiber.schedule do
          Timeout.timeout(0.05) { r.read(10) }
        rescue Timeout::Error => error
        end
      end
      assert_kind_of Timeout::Error, error
      # The cancelled read left the pipe alone: nothing was consumed.
      w.write("after")
      assert_equal "after", r.read_nonblock(100)
    end
  end

  def test_fiber_raise_cancels_read_into_buffer
    IO.pipe do |r, w|
      buffer = IO::Buffer.new(64)
      error = nil
      run_scheduler do
        reader = Fiber.schedule do
          buffer.read(r, 10)
        rescue => error
        end
        Fiber.schedule { reader.raise(RuntimeError, "stop") }
      end
      assert_equal "stop", error.message
      refute_predicate buffer, :locked?
      w.write("later")
      assert_equal "later", r.read_nonblock(100)
      assert_equal "\0" * 5, buffer.get_string(0, 5), "the kernel never wrote into the buffer"
    end
  end

  # Thread#kill lands in the loop, with two reads in flight: they are
  # cancelled, never consume data, and the ring goes with the scheduler.
  def test_thread_killed_with_reads_in_flight
    IO.pipe do |r, w|
      thread = Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule { r.read(10) }
        Fiber.schedule { r.read(10) }
      end
      Thread.pass until thread.stop?
      thread.kill
      assert thread.join(10), "the killed thread should end"
      w.write("after")
      assert_equal "after", r.read_nonblock(100)
    end
  end

  def test_cross_thread_unblock
    queue = Thread::Queue.new
    value = nil
    run_scheduler do
      Fiber.schedule { value = queue.pop }
      Thread.new { sleep 0.05; queue << :from_another_thread }
    end
    assert_equal :from_another_thread, value
  end

  def test_block_timeout
    queue = Thread::Queue.new
    value = :unset
    run_scheduler do
      Fiber.schedule { value = queue.pop(timeout: 0.05) }
    end
    assert_nil value
  end

  def test_mutex_between_fibers
    mutex = Thread::Mutex.new
    log = []
    run_scheduler do
      3.times do |i|
        Fiber.schedule do
          mutex.synchronize { log << i; sleep 0.01; log << i }
        end
      end
    end
    assert_equal [0, 0, 1, 1, 2, 2], log
  end

  # Process.wait2(pid) and Process.wait2(-1): IORING_OP_WAITID, then the
  # child is reaped with its real status.
  def test_process_wait
    [[7, :pid], [3, -1]].each do |code, which|
      pid = waited = status = nil
      run_scheduler do
        Fiber.schedule do
          pid = spawn(RbConfig.ruby, "-e", "exit #{code}")
          waited, status = Process.wait2(which == :pid ? pid : which)
        end
      end
      assert_equal pid, waited
      assert_equal code, status.exitstatus
    end
  end

  def test_ten_thousand_fibers
    count = 0
    IO.pipe do |r, w|
      run_scheduler do
        10_000.times do
          Fiber.schedule { r.wait_readable; count += 1 }
        end
        Fiber.schedule { sleep 0.05; w.write("go") }
      end
    end
    assert_equal 10_000, count
  end

  def test_socketpair_ping_pong
    a, b = UNIXSocket.pair
    rounds = 0
    run_scheduler do
      Fiber.schedule { 100.times { a.write("ping"); a.read(4) } }
      Fiber.schedule { 100.times { b.read(4); b.write("pong"); rounds += 1 } }
    end
    assert_equal 100, rounds
  ensure
    a&.close
    b&.close
  end

  def test_io_select
    result = []
    IO.pipe do |r, w|
      run_scheduler do
        Fiber.schedule do
          result << IO.select([r], nil, nil, 0.01)
          w.write("x")
          result << IO.select([r], [w], nil, 1)
          result << IO.select([r]) # ready: no timeout needed
        end
      end
      assert_nil result[0]
      assert_equal [[r], [w], []], result[1]
      assert_equal [[r], [], []], result[2]
    end
  end

  def test_io_select_buffered_data_is_ready
    result = nil
    IO.pipe do |r, w|
      w.write("line\nrest")
      run_scheduler do
        Fiber.schedule do
          r.gets # leaves "rest" in r's buffer, none in the pipe
          result = IO.select([r], nil, nil, 0)
        end
      end
      assert_equal [[r], [], []], result
    end
  end

  def test_address_resolve
    addresses = nil
    run_scheduler do
      Fiber.schedule { addresses = Addrinfo.getaddrinfo("localhost", nil).map(&:ip_address) }
    end
    assert_not_empty addresses
  end

  def test_schedule_from_a_fiber
    log = []
    run_scheduler do
      Fiber.schedule do
        log << :outer
        Fiber.schedule { sleep 0.01; log << :inner }
        log << :outer_after_schedule
        sleep 0.05
        log << :outer_end
      end
    end
    assert_equal [:outer, :outer_after_schedule, :inner, :outer_end], log
  end

  def test_closed_scheduler
    scheduler = IO::Uring::Scheduler.new
    scheduler.close
    assert_predicate scheduler, :closed?
    e = assert_raise(RuntimeError) { scheduler.kernel_sleep(0) }
    assert_match(/closed/, e.message)
    scheduler.close # a second close is harmless
  end

  def test_foreign_thread
    scheduler = IO::Uring::Scheduler.new
    Thread.new { scheduler.run }.join # the first user owns it
    e = assert_raise(ThreadError) { scheduler.kernel_sleep(0) }
    assert_match(/another thread/, e.message)
  ensure
    scheduler&.close rescue nil
  end

  def test_fork_child_gets_its_own_ring
    status = nil
    IO.pipe do |r, w|
      run_scheduler do
        Fiber.schedule { r.read(1) } # in flight in the parent during the fork
        Fiber.schedule do
          pid = fork do
            # The child has the inherited scheduler; it must not touch the
            # parent's ring, yet still work.
            Fiber.schedule { sleep 0.01 }
            exit!(0)
          end
          _, status = Process.wait2(pid)
          w.write("x")
        end
      end
    end
    assert_predicate status, :success?
  end
end
