# frozen_string_literal: true
require 'test/unit'

# IO#pwrite in a non-blocking fiber goes to Fiber::Scheduler#io_pwrite,
# which must run with the GVL like every other hook.  On 3.4.5 it ran
# inside the blocking region of the write: the write completed, and the
# scheduler's thread then never ended (Thread#join waited forever).
class TestFiberIOPwrite < Test::Unit::TestCase
  SCHEDULER = File.expand_path("scheduler.rb", __dir__)

  def test_io_pwrite_hook_runs_with_the_gvl
    assert_separately(["-r#{SCHEDULER}", "-rtempfile"], <<~'RUBY', timeout: 30)
      class PwriteScheduler < Scheduler
        attr_reader :calls

        def io_pwrite(io, buffer, from, length, offset)
          (@calls ||= []) << [from, length, Thread.current]
          Fiber.blocking { buffer.pwrite(io, from, length, offset) }
        end
      end

      Tempfile.create("pwrite") do |f|
        f.write("0123456789")
        f.flush
        f.pos = 1
        scheduler = written = nil
        thread = Thread.new do
          scheduler = PwriteScheduler.new
          Fiber.set_scheduler(scheduler)
          Fiber.schedule { written = f.pwrite("XY", 3) }
        end
        assert_same thread, thread.join(10), "the scheduler's thread did not end"
        # from 3; length 0: IO#pwrite asks for no minimum
        assert_equal [[3, 0, thread]], scheduler.calls
        assert_equal 2, written
        assert_equal 1, f.pos
        assert_equal "012XY56789", File.binread(f.path)
      end
    RUBY
  end

  # Errors from the hook come out of IO#pwrite as without a scheduler.
  def test_io_pwrite_hook_error
    assert_separately(["-r#{SCHEDULER}", "-rtempfile"], <<~'RUBY', timeout: 30)
      class FailingScheduler < Scheduler
        def io_pwrite(io, buffer, from, length, offset)
          -Errno::ENOSPC::Errno
        end
      end

      Tempfile.create("pwrite") do |f|
        error = nil
        thread = Thread.new do
          Fiber.set_scheduler(FailingScheduler.new)
          Fiber.schedule do
            f.pwrite("XY", 0)
          rescue SystemCallError => e
            error = e
          end
        end
        assert_same thread, thread.join(10), "the scheduler's thread did not end"
        assert_kind_of Errno::ENOSPC, error
        assert_equal "", File.binread(f.path)
      end
    RUBY
  end
end
