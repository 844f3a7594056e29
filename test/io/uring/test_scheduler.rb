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

  # RUBY_IO_URING=0 stands for a kernel that refuses io_uring (what
  # `make test-nouring` uses without the privilege to set the sysctl); any
  # other value changes nothing.
  def test_ruby_io_uring_0_refuses_like_the_kernel
    assert_separately([{"RUBY_IO_URING" => "0"}], <<~'RUBY')
      require "io/uring"
      e = assert_raise(Errno::EPERM) { IO::Uring::Scheduler.new }
      assert_equal "Operation not permitted - io_uring_queue_init_params", e.message
    RUBY
    assert_separately([{"RUBY_IO_URING" => "1"}], <<~'RUBY')
      require "io/uring"
      IO::Uring::Scheduler.new.close
    RUBY
  end

  # RUBY_IO_URING_COREDUMP=1 adds bit 3 (file-backed shared mappings, which
  # the rings are) to the process's coredump_filter when a ring is set up,
  # keeping the other bits; without it the filter is left alone.
  def test_ruby_io_uring_coredump
    omit "no /proc/self/coredump_filter" unless File.exist?("/proc/self/coredump_filter")
    code = <<~'RUBY'
      require "io/uring"
      File.write("/proc/self/coredump_filter", "0x31")
      IO::Uring::Scheduler.new.close
      IO::Uring::Scheduler.new.close
      puts File.read("/proc/self/coredump_filter").to_i(16)
    RUBY
    assert_in_out_err([{"RUBY_IO_URING_COREDUMP" => "1"}, "-e", code], "", ["#{0x39}"], [])
    assert_in_out_err([{"RUBY_IO_URING_COREDUMP" => "0"}, "-e", code], "", ["#{0x31}"], [])
    assert_in_out_err(["-e", code], "", ["#{0x31}"], [])
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

  # A wait without a timeout of its own uses IO#timeout, as without a
  # scheduler: rb_io_wait() passes nil on to the hook (IO#wait_readable,
  # and the waits of C extensions such as OpenSSL's).
  def test_io_wait_nil_timeout_is_io_timeout
    result = :unset
    elapsed = nil
    IO.pipe do |r, w|
      r.timeout = 0.1
      run_scheduler do
        Fiber.schedule do
          t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          result = r.wait_readable
          elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t
        end
      end
      assert_nil r.wait_readable, "stock: nil after IO#timeout"
    end
    assert_nil result
    assert_operator elapsed, :>=, 0.09
    assert_operator elapsed, :<, 5
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

  # Sockets are read and written with IORING_OP_RECV/SEND; other IOs that
  # ruby marks duplex (a terminal, a popen pipe) answer ENOTSOCK to those
  # and must still work.  Every result as without a scheduler (pread on a
  # stream is ESPIPE, not a read at the current position).
  def test_socket_and_other_duplex_ios
    require 'pty'
    run = proc do
      results = {}
      UNIXSocket.pair do |a, b|
        a.write("ping")
        results[:unix] = [b.read(4), b.write("pong"), a.read(4)]
        b.close
        results[:unix_eof] = [a.read(1), a.read]
      end
      server = TCPServer.new("127.0.0.1", 0)
      c = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      d = server.accept
      c.write("x" * 100_000)
      results[:tcp] = d.read(100_000).bytesize
      d.close
      results[:tcp_epipe] = begin
        5.times { c.write("y" * 65536) }
        :written
      rescue SystemCallError => e
        e.class
      end
      results[:pread] = begin
        c.pread(1, 0)
      rescue SystemCallError, EOFError => e
        e.class
      end
      results[:pwrite] = begin
        c.pwrite("z", 0)
      rescue SystemCallError => e
        e.class
      end
      [c, server].each(&:close)
      IO.pipe do |r, w|
        w.write("abc")
        results[:pipe_pread] = (r.pread(1, 0) rescue $!.class)
        results[:pipe_pwrite] = (w.pwrite("d", 0) rescue $!.class)
        results[:pipe_read] = r.read(3)
      end
      PTY.open do |master, slave|
        slave.write("tty\n")
        results[:pty] = master.readpartial(100)
        master.write("back\n")
        results[:pty_back] = slave.gets
      end
      IO.popen(["cat"], "r+") do |io|
        io.write("popen")
        io.close_write
        results[:popen] = io.read
      end
      results
    end
    plain = Thread.new { run.call }.value
    ours = nil
    run_scheduler { Fiber.schedule { ours = run.call } }
    assert_equal(["ping", 4, "pong"], plain[:unix])
    assert_equal(Errno::EPIPE, plain[:tcp_epipe])
    assert_equal(Errno::ESPIPE, plain[:pread])
    assert_equal("popen", plain[:popen])
    assert_equal(plain, ours)
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
    # its thread has ended: any thread may close it (the ring is released
    # now, not by the GC)
    assert_nil scheduler.close
    assert_predicate scheduler, :closed?
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

  # --- Regressions from an adversarial review ---------------------------

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Keep the thread busy without yielding, so that the loop reaps what
  # happens meanwhile in one turn.
  def busy(seconds)
    t = now
    nil while now - t < seconds
  end

  # The raise held back behind a completion (above) is not starved by a
  # fiber whose reads keep completing: it comes when the fiber next waits.
  def test_timeout_fires_while_reads_keep_completing
    error = nil
    IO.pipe do |r, w|
      writer = Thread.new { loop { w.write("x" * 4096) } rescue nil }
      run_scheduler do
        Fiber.schedule do
          Timeout.timeout(0.1) { loop { r.readpartial(4096) } }
        rescue Timeout::Error => error
        end
      end
      r.close
      writer.join
    end
    assert_kind_of Timeout::Error, error
  end

  # A Timeout held behind a completion (above) used to be raised at the
  # next hook's entry: in #io_close before the close (the IO said closed,
  # the descriptor stayed open), and never in hooks that wait again
  # without leaving (an io_write of the rest, a process_wait whose child
  # another fiber reaped).  It is raised at the fiber's next wait, whatever
  # the hook; #io_close closes first.
  def test_held_timeout_and_io_close
    out = []
    r, w = IO.pipe
    fd = r.fileno
    pipe = File.readlink("/proc/self/fd/#{fd}")
    writer = Thread.new { sleep 0.15; w.write("data") }
    run_scheduler do
      Fiber.schedule do
        Timeout.timeout(0.05) { out << r.readpartial(100); r.close; out << :closed }
      rescue Timeout::Error
        out << :timeout
      end
      Fiber.schedule { sleep 0.01; busy(0.3) }
    end
    writer.join
    assert_equal "data", out.first
    assert_predicate r, :closed?
    assert_not_equal pipe, (File.readlink("/proc/self/fd/#{fd}") rescue nil), "the descriptor leaked"
  ensure
    r.close unless r.closed?
    w.close
  end

  def test_held_timeout_in_a_write_that_goes_on
    out = nil
    IO.pipe do |r, w|
      drained = helper = nil
      t0 = now
      run_scheduler do
        Fiber.schedule do
          Timeout.timeout(0.1) { IO::Buffer.for(("x" * (1 << 20)).freeze).write(w, 1 << 20); out = :wrote_all }
        rescue Timeout::Error
          out = now - t0
        end
        Fiber.schedule { sleep 0.02; busy(0.4) }
        helper = Thread.new do
          sleep 0.2
          r.read_nonblock(65536, exception: false)
          sleep 2.8
          drained = Thread.new { r.read rescue nil } # unblocks a lost timeout
        end
      end
      helper.kill.join # the scheduler is done: nothing left to unblock
      w.close
      drained&.join
    end
    assert_kind_of Float, out, "the Timeout must fire"
    assert_operator out, :<, 2
  end

  def test_held_timeout_in_a_process_wait_that_waits_again
    c1 = spawn(RbConfig.ruby, "-e", "sleep 0.2")
    c2 = spawn(RbConfig.ruby, "-e", "sleep 2")
    out = []
    run_scheduler do
      Fiber.schedule do
        Timeout.timeout(0.1) { out << [:a, Process.wait] }
      rescue Timeout::Error
        out << :a_timeout
      end
      Fiber.schedule { out << [:b, Process.wait] }
      Fiber.schedule { sleep 0.02; busy(0.4) }
    end
    assert_include out, :a_timeout
    assert_include out, [:b, c1]
  ensure
    Process.waitall
  end

  def test_timeout_nan_never_fires
    result = nil
    run_scheduler do
      Fiber.schedule { result = Timeout.timeout(Float::NAN) { sleep 0.1; :finished } }
    end
    assert_equal :finished, result
  end

  # A later element of IO.select's array raising (closed, no #to_io) used
  # to leave the polls queued for the earlier ones in flight, pointing into
  # the dead frame: the next completion or GC crashed.
  def test_io_select_raising_element_leaves_nothing_in_flight
    # IO::Buffer's experimental warning (printed on master) is not the test.
    assert_separately(["-W:no-experimental", "-rio/uring"], <<~'RUBY', timeout: 30)
      r, w = IO.pipe
      r2, _w2 = IO.pipe
      r2.close
      errors = []
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule do
          [r2, Object.new].each do |bad|
            IO.select([r, bad], nil, nil, 1)
          rescue IOError, TypeError => e
            errors << e.class
          end
          w.write("x")          # a stale poll on r would complete now
          sleep 0.05
          GC.start
          assert_equal [r], IO.select([r], nil, nil, 1)[0]
        end
      end.join
      assert_equal [IOError, TypeError], errors
    RUBY
  end

  # #to_io growing the array IO.select was given used to write entries past
  # the end of the array sized from its length.
  def test_io_select_to_io_growing_the_array
    assert_separately(["-rio/uring"], <<~'RUBY', timeout: 30)
      r, _w = IO.pipe
      arr = []
      grower = Object.new
      grower.define_singleton_method(:to_io) { 300.times { arr << r }; r }
      arr << grower
      result = :unset
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule { result = IO.select(arr, nil, nil, 0.01); GC.start }
      end.join
      assert_nil result
      assert_equal 301, arr.size
    RUBY
  end

  # A fiber left a blocking operation (Timeout) while a worker still ran it:
  # the worker went on writing into the buffer the fiber then freed.  The
  # fiber now waits until the work is over.
  def test_blocking_operation_outlived_by_nothing
    assert_separately(["-rio/uring", "-rtimeout"], <<~'RUBY', timeout: 60)
      Warning[:experimental] = false
      size = 256 << 20
      src = IO::Buffer.new(size)
      src.clear(0xAA)
      result = nil
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule do
          dst = IO::Buffer.new(size)
          begin
            Timeout.timeout(0.001) { dst.copy(src) }
            result = :finished
          rescue Timeout::Error
            before = dst.get_string(size - 4096, 4096)
            sleep 0.1
            result = before == dst.get_string(size - 4096, 4096) ? :stopped : :still_writing
            dst.free
          end
        end
      end.join
      refute_equal :still_writing, result
      # The pool still works after the abandoned job.
      copied = nil
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule { b = IO::Buffer.new(1 << 20); b.copy(src, 0, 1 << 20); copied = b.get_string(0, 4) }
      end.join
      assert_equal "\xAA\xAA\xAA\xAA".b, copied
    RUBY
  end

  # The timer of a Timeout and the read it guards completed in the same
  # turn, the timer first: the exception was delivered and the bytes the
  # kernel had read were lost.
  def test_timeout_racing_a_completed_read_keeps_the_bytes
    got = []
    IO.pipe do |r, w|
      writer = Thread.new { sleep 0.15; w.write("first"); sleep 0.3; w.write("second") }
      run_scheduler do
        Fiber.schedule do
          begin
            Timeout.timeout(0.05) { got << r.readpartial(100) }
          rescue Timeout::Error
            got << :timeout
          end
          got << r.readpartial(100)
        end
        Fiber.schedule { sleep 0.01; busy(0.3) }
      end
      writer.join
    end
    assert_include got, "first", "no byte may be lost"
  end

  # Two fibers waiting for any child: WNOWAIT left the first child waitable
  # for both, and the second reaped it again (ECHILD).
  def test_two_any_child_waits
    a = spawn(RbConfig.ruby, "-e", "sleep 0.2")
    b = spawn(RbConfig.ruby, "-e", "sleep 1")
    results = []
    run_scheduler do
      2.times { Fiber.schedule { results << (Process.wait rescue $!) } }
      Fiber.schedule { sleep 0.1; busy(0.5) }
    end
    assert_equal [a, b].sort, results.sort
  ensure
    Process.waitall
  end

  # A full submission queue used to split IO#wait_readable's poll from its
  # linked timeout: that wait never timed out (only the write ended it).
  def test_io_wait_timeouts_with_a_full_submission_queue
    n = 700
    results = []
    IO.pipe do |r, w|
      run_scheduler do
        Fiber.schedule { sleep 0.01 }
        n.times { Fiber.schedule { results << r.wait_readable(0.2) } }
        Fiber.schedule { sleep 2; w.write("x") }
      end
    end
    assert_equal [nil] * n, results
  end

  # The same under M:N threads, whose ring has the kernel's submission
  # thread (SQPOLL): a full queue waits for that thread to take entries.
  def test_full_submission_queue_under_mn_threads
    assert_separately([{"RUBY_MN_THREADS" => "1"}, "-W:no-experimental", "-rio/uring"], <<~'RUBY', timeout: 60)
      n = 700
      results = []
      IO.pipe do |r, w|
        Thread.new do
          Fiber.set_scheduler(IO::Uring::Scheduler.new)
          Fiber.schedule { sleep 0.01 }
          n.times { Fiber.schedule { results << r.wait_readable(0.2) } }
          Fiber.schedule { sleep 2; w.write("x") }
        end.join
      end
      assert_equal [nil] * n, results
    RUBY
  end

  # Nested Timeouts expiring in one turn: the inner one's end dropped the
  # outer one's pending raise, and the outer block ran on.
  def test_nested_timeouts_expiring_together
    outer = Class.new(StandardError)
    outcome = nil
    run_scheduler do
      Fiber.schedule do
        begin
          Timeout.timeout(0.2, outer) do
            begin
              Timeout.timeout(0.1) { sleep 5 }
            rescue Timeout::Error
            end
            sleep 2
            outcome = :outer_lost
          end
        rescue outer
          outcome = :outer_raised
        end
      end
      Fiber.schedule { sleep 0.01; busy(0.4) }
    end
    assert_equal :outer_raised, outcome
  end

  # An #unblock that came after Queue#pop's timeout fired, before the fiber
  # ran, was kept as an early wake-up and cut the fiber's next sleep short.
  def test_unblock_after_a_block_timed_out_does_not_wake_a_later_sleep
    q = Thread::Queue.new
    slept = nil
    pusher = Thread.new { sleep 0.2; q << :item }
    run_scheduler do
      f = Fiber.schedule do
        q.pop(timeout: 0.05)
        t = now
        begin
          sleep
        rescue RuntimeError
        end
        slept = now - t
      end
      Fiber.schedule { sleep 0.04; busy(0.5) }
      Fiber.schedule { sleep 0.01; busy(0.09) }
      Fiber.schedule { sleep 1.5; f.raise("wake") if f.alive? }
    end
    pusher.join
    assert_operator slept, :>, 0.5, "sleep without a duration lasts until the raise"
  end

  # Timers ran from the loop's next submission, which a busy fiber delays.
  def test_timers_start_when_asked_for
    out = {}
    run_scheduler do
      Fiber.schedule { t = now; sleep 0.5; out[:sleep] = now - t }
      Fiber.schedule { t = now; (Timeout.timeout(0.5) { sleep 5 } rescue out[:timeout] = now - t) }
      Fiber.schedule { busy(1) }
    end
    # From the request: about 1 s (the busy fiber); from submission, 1.5 s.
    assert_operator out[:sleep], :<, 1.4
    assert_operator out[:timeout], :<, 1.4
  end

  # Durations beyond time_t ended the wait at once (the kernel refused the
  # negative timespec); they raise what they raise without a scheduler.
  def test_out_of_range_durations
    IO.pipe do |r, w|
      errors = {}
      run_scheduler do
        Fiber.schedule { sleep 1e19 rescue errors[:sleep] = $! }
        Fiber.schedule { r.wait_readable(1e19) rescue errors[:wait] = $! }
        Fiber.schedule { IO.select([r], nil, nil, Float::NAN) rescue errors[:select] = $! }
        Fiber.schedule { sleep(-1) rescue errors[:negative] = $! }
      end
      [:sleep, :wait, :select].each do |k|
        assert_kind_of RangeError, errors[k], k
      end
      assert_equal "10000000000000000000.000000 out of Time range", errors[:sleep].message
      assert_kind_of ArgumentError, errors[:negative]
      assert_equal "time interval must not be negative", errors[:negative].message
    end
  end

  # Timeout and Queue#pop hand their durations on unchecked, as without a
  # scheduler: a huge one means never, not at once.
  def test_huge_timeout_durations_mean_never
    q = Thread::Queue.new
    values = []
    run_scheduler do
      Fiber.schedule { values << Timeout.timeout(1e19) { sleep 0.05; :block_done } }
      Fiber.schedule { values << q.pop(timeout: 1e19) }
      Fiber.schedule { sleep 0.1; q << :item }
    end
    assert_equal [:block_done, :item], values
  end

  # Under M:N threads a Ruby thread moves between native threads: a
  # single-issuer ring refused the moved thread (Errno::EEXIST), and on
  # master, which retires idle native threads, the kernel cancelled the
  # requests a retired thread had submitted (a read raised
  # Errno::ECANCELED; the spawned child's wait is what makes one retire).
  def test_mn_threads
    # IO::Buffer's experimental warning (printed on master) is not the test.
    assert_separately([{"RUBY_MN_THREADS" => "1"}, "-W:no-experimental", "-rio/uring"], <<~'RUBY', timeout: 60)
      counts = 4.times.map do
        Thread.new do
          Fiber.set_scheduler(IO::Uring::Scheduler.new)
          n = 0
          r, w = IO.pipe
          Fiber.schedule { 50.times { r.read(1); n += 1 } }
          Fiber.schedule { 50.times { w.write("x"); sleep 0.001 } }
          Fiber.schedule { Process.wait(spawn("true")) }
          Fiber.set_scheduler(nil)
          n
        end
      end.map(&:value)
      assert_equal [50] * 4, counts
    RUBY
  end
end
