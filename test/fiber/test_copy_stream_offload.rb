# frozen_string_literal: true
require 'test/unit'

# IO.copy_stream runs its copy loop with IO_WITHOUT_GVL, which a scheduler's
# #blocking_operation_wait may run on another thread.  When the source has
# no bytes yet, the loop waits (nogvl_wait_for) with the scheduler of the
# thread that called copy_stream, whenever that thread happens to run a
# non-blocking fiber: the hook was called from the worker thread.  CRuby's
# test scheduler then raised FiberError and the copying fiber was never
# resumed; a scheduler that checks its thread raised ThreadError.  The
# worker now polls.
class TestFiberCopyStreamOffload < Test::Unit::TestCase
  SCHEDULER = File.expand_path("scheduler.rb", __dir__)

  def test_offloaded_copy_waits_on_the_worker
    assert_separately(["-r#{SCHEDULER}", "-rtempfile"], <<~'RUBY', timeout: 60)
      class WatchingScheduler < Scheduler
        attr_reader :io_wait_threads, :offloaded

        def io_wait(io, events, duration)
          (@io_wait_threads ||= []) << Thread.current
          super
        end

        def blocking_operation_wait(work)
          @offloaded = true
          super
        end
      end

      Tempfile.create("copy") do |file|
        # O_APPEND: a scheduler whose #io_splice declines appending
        # destinations (IO::Uring::Scheduler's) offloads this copy too
        dst = File.open(file.path, "ab")
        r, w = IO.pipe
        data = Random.bytes(100_000)
        scheduler = result = nil
        threads_before = Thread.list
        thread = Thread.new do
          scheduler = WatchingScheduler.new
          Fiber.set_scheduler(scheduler)
          Fiber.schedule do
            result = IO.copy_stream(r, dst)
          rescue => result
          end
          # The copy now waits on a worker for the pipe.  This fiber keeps
          # the thread in a non-blocking fiber until the worker sleeps in
          # its wait (or long enough for it to have called the hook).
          Fiber.schedule do
            deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
            until Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
              workers = Thread.list - threads_before - [thread]
              break if workers.any? && workers.all? { _1.status == "sleep" }
            end
            w.write(data)
            w.close
          end
        end
        assert_not_nil thread.join(10), "the scheduler's thread hung"
        assert_predicate scheduler, :offloaded
        assert_equal data.bytesize, result
        assert_equal data, File.binread(file.path)
        assert_equal [], (scheduler.io_wait_threads || []) - [thread],
                     "the scheduler's hooks ran on another thread"
      ensure
        [dst, r, w].each { |io| io&.close }
      end
    RUBY
  end
end
