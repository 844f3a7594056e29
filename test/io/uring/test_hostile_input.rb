# frozen_string_literal: false
require 'test/unit'
require 'socket'
require_relative 'uring_test_helper'

# IO::Uring::Scheduler's public methods called with what Ruby's core never
# passes: wrong types, negative and huge lengths and offsets, closed IOs,
# read-only buffers, the wrong thread or fiber.  Each gets a clear exception
# (IO::Buffer's, Fiber#raise's, where they have one for the same mistake),
# and the scheduler goes on: its thread ends, nothing is left waiting.
class TestIOUringHostileInput < Test::Unit::TestCase
  include IOUringTestHelper

  # Runs the block in a scheduled fiber of a fresh scheduler on its own
  # thread; fails unless the block finished and the thread ended (a
  # scheduler left waiting for something would keep it alive).
  def in_scheduler
    done = false
    scheduler = nil
    thread = Thread.new do
      scheduler = IO::Uring::Scheduler.new
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        yield scheduler
        done = true
      end
    end
    assert(thread.join(10), "the scheduler's thread did not end")
    assert(done, "the block did not finish")
  end

  # The exception a block raises, as [class, message].
  def raised
    yield
    flunk "nothing raised"
  rescue Test::Unit::AssertionFailedError
    raise
  rescue Exception => e
    [e.class, e.message]
  end

  def test_transfer_lengths_and_offsets_are_checked_as_io_buffer_does
    r, w = IO.pipe
    w.write("x" * 100)
    buffer = IO::Buffer.new(16)
    in_scheduler do |s|
      [[-1, 0], [1 << 40, 0], [1, -5], [1, 1 << 40], [10, 10], [17, 0]].each do |length, offset|
        expected = raised { buffer.read(r, length, offset) }
        assert_equal expected, raised { s.io_read(r, buffer, length, offset) }, "io_read(#{length}, #{offset})"
        expected = raised { buffer.write(w, length, offset) }
        assert_equal expected, raised { s.io_write(w, buffer, length, offset) }, "io_write(#{length}, #{offset})"
      end
      assert_raise_with_message(TypeError, /Integer/) { s.io_read(r, buffer, "1", 0) }
      assert_raise(TypeError) { s.io_read(r, "not a buffer", 1, 0) }
      assert_raise(IO::Buffer::AccessError) { s.io_read(r, IO::Buffer.for("read-only".freeze), 1, 0) }
      # still usable
      assert_equal 16, s.io_read(r, buffer, 16, 0)
    end
  ensure
    r&.close
    w&.close
  end

  # A negative file offset is pread(2)'s EINVAL; io_uring would take -1 for
  # "the current position" and read as #io_read does.
  def test_negative_pread_offset_is_einval
    File.open(__FILE__) do |f|
      buffer = IO::Buffer.new(8)
      expected = buffer.pread(f, -1, 1)
      assert_equal(-Errno::EINVAL::Errno, expected)
      in_scheduler do |s|
        assert_equal expected, s.io_pread(f, buffer, -1, 1, 0)
        assert_equal 0, f.pos
      end
    end
  end

  # A bad timeout raises before the fiber is listed as blocked: listed, it
  # would keep the loop (and its thread) running forever.
  def test_block_with_a_bad_timeout_leaves_nothing_behind
    in_scheduler do |s|
      assert_raise(TypeError) { s.block(nil, "soon") }
      assert_raise(TypeError) { s.block(nil, Object.new) }
    end
  end

  # The exception class of #timeout_after is raised later, from the loop:
  # a non-exception is refused at once, as Fiber#raise refuses it.
  def test_timeout_after_refuses_what_fiber_raise_refuses
    f = Fiber.new { Fiber.yield }
    f.resume
    expected = raised { f.raise(5, "message") }
    in_scheduler do |s|
      assert_equal expected, raised { s.timeout_after(0.01, 5, "message") { sleep 0.1 } }
      # the scheduler goes on
      assert_raise(Timeout::Error) { s.timeout_after(0.01, Timeout::Error, "late") { sleep 1 } }
    end
  end

  def test_fiber_interrupt_refuses_a_non_exception
    in_scheduler do |s|
      assert_raise_with_message(TypeError, "exception class/object expected") do
        s.fiber_interrupt(Fiber.current, "not an exception")
      end
      assert_nil s.fiber_interrupt(Fiber.current, IOError.new("not in a hook"))
    end
  end

  # #run belongs to the loop fiber: from one of its fibers it would wait for
  # itself.
  def test_run_from_a_scheduled_fiber
    in_scheduler do |s|
      assert_raise_with_message(RuntimeError, /loop fiber/) { s.run }
    end
  end

  def test_buffer_registration_types
    in_scheduler do |s|
      assert_raise_with_message(TypeError, /expected IO::Buffer/) { s.io_buffer_register("x") }
      assert_raise_with_message(TypeError, /expected IO::Buffer/) { s.io_buffer_unregister(1) }
      assert_raise(ArgumentError) { s.io_buffer_register(IO::Buffer.new(0)) }
      assert_raise(ArgumentError) { s.io_buffer_register(IO::Buffer.for("read-only".freeze)) }
      assert_raise(ArgumentError) { s.io_buffer_register(IO::Buffer.new(8192).slice(4096, 16)) }
      assert_equal false, s.io_buffer_unregister(IO::Buffer.new(4))
    end
  end

  def test_wrong_types_and_closed_ios
    r, w = IO.pipe
    closed, = IO.pipe
    closed.close
    buffer = IO::Buffer.new(4)
    in_scheduler do |s|
      assert_raise(TypeError) { s.io_wait(nil, IO::READABLE, nil) }
      assert_raise(TypeError) { s.io_wait(r, "x", nil) }
      assert_raise(TypeError) { s.io_wait(r, IO::READABLE, "x") }
      assert_raise(ArgumentError) { s.io_wait(r, IO::READABLE, -1) }
      assert_raise(IOError) { s.io_wait(closed, IO::READABLE, 0) }
      assert_raise(IOError) { s.io_read(closed, buffer, 1, 0) }
      assert_raise(TypeError) { s.io_splice(1, nil, 2, nil, 1) }
      assert_raise(IOError) { s.io_splice(closed, nil, w, nil, 1) }
      assert_equal(-Errno::ESPIPE::Errno, s.io_splice(r, 0, w, nil, 1))
      assert_raise(TypeError) { s.io_close("x") }
      assert_raise(RangeError) { s.io_close(1 << 40) }
      assert_equal(-Errno::EBADF::Errno, s.io_close(-1))
      assert_raise(ArgumentError) { s.read_pool(3, 4096) }
      assert_raise(ArgumentError) { s.read_pool(8, 100) }
      assert_raise(ArgumentError) { s.read_pooled(r, -1) }
      assert_raise(IOError) { s.read_pooled(closed) }
      assert_raise(TypeError) { s.kernel_sleep("x") }
      assert_raise(ArgumentError) { s.kernel_sleep(-1) }
      assert_equal(raised { sleep(1 << 100) }, raised { s.kernel_sleep(1 << 100) })
      assert_raise(TypeError) { s.unblock(nil, "not a fiber") }
      assert_raise(TypeError) { s.process_open("not a handle") }
      assert_raise(TypeError) { s.io_select("x", nil, nil, 0) }
      assert_raise(RuntimeError) { s.process_fork }
    end
  ensure
    r&.close
    w&.close
  end

  # Everything but #fiber_interrupt and #unblock (which other threads call)
  # belongs to the scheduler's thread.
  def test_wrong_thread
    s = IO::Uring::Scheduler.new
    queue = Thread::Queue.new
    thread = Thread.new do
      Fiber.set_scheduler(s)
      Fiber.schedule { queue.pop }
    end
    Thread.pass until thread.status == "sleep" || !thread.alive?
    r, w = IO.pipe
    message = "IO::Uring::Scheduler belongs to another thread"
    assert_raise_with_message(ThreadError, message) { s.io_read(r, IO::Buffer.new(4), 1, 0) }
    assert_raise_with_message(ThreadError, message) { s.io_buffer_register(IO::Buffer.new(16)) }
    assert_raise_with_message(ThreadError, message) { s.kernel_sleep(0.01) }
    assert_raise_with_message(ThreadError, message) { s.run }
    assert_raise_with_message(ThreadError, message) { s.close }
    queue << :done
    assert thread.join(10)
  ensure
    r&.close
    w&.close
  end

  def test_constructor
    assert_raise(ArgumentError) { IO::Uring::Scheduler.new(1) }
    assert_raise(ArgumentError) { IO::Uring::Scheduler.new(entries: 8) }
  end
end
