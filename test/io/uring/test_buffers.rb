# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'etc'
require_relative 'uring_test_helper'

# Registered buffers (Fiber::Scheduler#io_buffer_register, patch 0007;
# ext/io/uring/buffers.c): the contract, the fixed-buffer data paths
# (counted by #io_buffer_stats), and what ends a registration.
class TestIOUringBuffers < Test::Unit::TestCase
  include IOUringTestHelper

  def setup
    super
    Warning[:experimental] = false
  end

  # The block's value, from a fiber of a new scheduler; fails unless the
  # block ran to its end.
  def run_scheduler
    result = nil
    finished = false
    Thread.new do
      scheduler = IO::Uring::Scheduler.new
      Fiber.set_scheduler(scheduler)
      Fiber.schedule { result = yield scheduler; finished = true }
    end.join(30) or flunk("the scheduler thread hung")
    assert finished, "the scheduled block did not run to its end"
    result
  end

  def fixed_operations(scheduler)
    scheduler.io_buffer_stats[:fixed_operations]
  end

  def test_contract
    run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      mapped = IO::Buffer.new(1 << 16, IO::Buffer::MAPPED)
      assert_equal({registered: 0, bytes: 0, fixed_operations: 0, refusals: 0, table: nil}, s.io_buffer_stats)
      assert_equal true, s.io_buffer_register(arena)
      assert_equal true, s.io_buffer_register(arena), "registering again is a no-op"
      assert_equal true, s.io_buffer_register(mapped)
      assert_equal({registered: 2, bytes: 2 << 16, fixed_operations: 0, refusals: 0, table: true}, s.io_buffer_stats)

      assert_predicate arena, :locked?
      assert_raise(IO::Buffer::LockedError) { arena.free }
      assert_raise(IO::Buffer::LockedError) { arena.resize(10) }
      assert_raise(IO::Buffer::LockedError) { arena.transfer }
      arena.locked { arena.set_string("usable") }
      assert_predicate arena, :locked?, "#locked leaves the registration's lock"

      assert_raise_with_message(TypeError, /expected IO::Buffer/) { s.io_buffer_register("string") }
      assert_raise_with_message(ArgumentError, /slice/) { s.io_buffer_register(arena.slice(0, 16)) }
      assert_raise_with_message(ArgumentError, /read-only/) { s.io_buffer_register(IO::Buffer.for("frozen")) }
      IO::Buffer.for(+"mutable") do |b|
        assert_raise_with_message(ArgumentError, /String/) { s.io_buffer_register(b) }
      end
      assert_raise_with_message(ArgumentError, /null/) { s.io_buffer_register(IO::Buffer.new(0)) }
      assert_raise(ArgumentError) { s.io_buffer_register(IO::Buffer.new(1 << 16, IO::Buffer::MAPPED | IO::Buffer::SHARED)) }

      assert_equal true, s.io_buffer_unregister(arena)
      assert_equal false, s.io_buffer_unregister(arena)
      assert_equal false, s.io_buffer_unregister(IO::Buffer.new(8))
      refute_predicate arena, :locked?
      arena.free
      assert_equal 1, s.io_buffer_stats[:registered]
    end
  end

  def test_other_thread_is_refused
    run_scheduler do |s|
      error = Thread.new { s.io_buffer_register(IO::Buffer.new(8)) rescue $! }.value
      assert_kind_of ThreadError, error
      assert_equal 0, s.io_buffer_stats[:registered]
    end
  end

  def test_pipe_read_and_write_use_the_fixed_path
    r, w = IO.pipe
    run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      s.io_buffer_register(arena)
      out = arena.slice(0, 5)
      out.set_string("fixed")
      Fiber.schedule { out.write(w, 5) }
      into = arena.slice(4096, 5)
      assert_equal 5, into.read(r, 5)
      assert_equal "fixed", into.get_string
      assert_equal 2, fixed_operations(s)
      # Unregistered memory: the ordinary operations.
      other = IO::Buffer.new(5)
      Fiber.schedule { w.write("plain") }
      other.read(r, 5)
      assert_equal "plain", other.get_string
      assert_equal 2, fixed_operations(s)
    end
  ensure
    r&.close; w&.close
  end

  def test_sockets_use_the_fixed_path
    pairs = [UNIXSocket.pair]
    server = TCPServer.new("127.0.0.1", 0)
    client = TCPSocket.new("127.0.0.1", server.addr[1])
    pairs << [client, server.accept]
    run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      s.io_buffer_register(arena)
      pairs.each_with_index do |(a, b), i|
        data = "socket #{i}" * 100
        Fiber.schedule { a.write(data) }
        slice = arena.slice(8192 * i, data.bytesize)
        assert_equal data.bytesize, slice.read(b, data.bytesize)
        assert_equal data, slice.get_string
      end
      assert_operator fixed_operations(s), :>=, 2
    end
  ensure
    pairs.flatten.each(&:close)
    server&.close
  end

  # A regular file through the page cache: reads are answered inline
  # (RWF_NOWAIT) where the page cache has them, writes the file system
  # cannot make without waiting go to the ring, and fixed; either way the
  # bytes are right.
  def test_regular_file_through_a_registered_buffer
    path = File.join(Dir.tmpdir, "test_uring_buffers_file_#{$$}")
    data = Random.new(4).bytes(3 * 4096 + 100)
    result = run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      s.io_buffer_register(arena)
      out = arena.slice(0, data.bytesize)
      out.set_string(data)
      File.open(path, "w+") do |f|
        out.pwrite(f, 0, data.bytesize)
        into = arena.slice(32768, data.bytesize)
        into.pread(f, 0, data.bytesize)
        into.get_string
      end
    end
    assert_equal data, result
    assert_equal data, File.binread(path)
  ensure
    File.unlink(path) if path && File.exist?(path)
  end

  def test_o_direct_pread_uses_the_fixed_path
    path = File.join(Dir.tmpdir, "test_uring_buffers_#{$$}")
    data = Random.new(3).bytes(64 * 1024)
    File.binwrite(path, data)
    begin
      file = File.open(path, File::RDONLY | File::DIRECT)
    rescue Errno::EINVAL
      omit "#{Dir.tmpdir} refuses O_DIRECT"
    end
    result = run_scheduler do |s|
      arena = IO::Buffer.new(1 << 20, IO::Buffer::MAPPED)  # page-aligned
      s.io_buffer_register(arena)
      readers = 16.times.map do |i|
        Fiber.schedule do
          slice = arena.slice(i * 65536, 4096)
          slice.pread(file, i * 4096, 4096)
          assert_equal data.byteslice(i * 4096, 4096), slice.get_string
        end
      end
      sleep 0.001 while readers.any?(&:alive?)
      slice = arena.slice(0, 65536)
      slice.pread(file, 0, 65536)
      [slice.get_string == data, fixed_operations(s)]
    end
    assert_equal true, result[0]
    # Every read on the ring: direct I/O is never made inline (RWF_NOWAIT
    # would make the fiber's thread wait for the device, one read at a time).
    assert_equal 17, result[1]
  ensure
    file&.close
    File.unlink(path) if path && File.exist?(path)
  end

  def test_compaction_while_registered
    r, w = IO.pipe
    run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      s.io_buffer_register(arena)
      GC.compact if GC.respond_to?(:compact)
      GC.start
      Fiber.schedule { w.write("after gc") }
      slice = arena.slice(100, 8)
      slice.read(r, 8)
      assert_equal "after gc", slice.get_string
      assert_equal 1, fixed_operations(s)
    end
  ensure
    r&.close; w&.close
  end

  # A fiber interrupted in a fixed read leaves the registration as it was:
  # the operation is cancelled, its lock released.
  def test_interrupt_and_close_during_a_fixed_read
    r, w = IO.pipe
    r2, w2 = IO.pipe
    done = run_scheduler do |s|
      arena = IO::Buffer.new(1 << 16)
      s.io_buffer_register(arena)
      f = Fiber.schedule { arena.slice(0, 10).read(r, 10) rescue $! }
      Fiber.schedule { f.raise(RuntimeError, "interrupted") }
      errors = []
      Fiber.schedule { errors << (arena.slice(16, 10).read(r2, 10) rescue $!) }
      r2.close
      sleep 0.01 until errors.any?
      assert_kind_of IOError, errors.first
      assert_equal 1, s.io_buffer_stats[:registered]
      assert_equal true, s.io_buffer_unregister(arena)
      refute_predicate arena, :locked?, "no operation's lock left behind"
      :done
    end
    assert_equal :done, done
  ensure
    [r, w, r2, w2].each { |io| io.close unless io.closed? }
  end

  def test_close_ends_registrations
    arena = IO::Buffer.new(1 << 16)
    run_scheduler do |s|
      s.io_buffer_register(arena)
    end
    refute_predicate arena, :locked?, "the scheduler's close unlocked it"
    arena.free
  end

  def test_fork_child_has_none
    arena = IO::Buffer.new(1 << 16)
    child = nil
    run_scheduler do |s|
      s.io_buffer_register(arena)
      r, w = IO.pipe
      pid = fork do
        r.close
        report = [arena.locked?, Fiber.scheduler&.io_buffer_stats&.fetch(:registered)]
        report << Fiber.scheduler.io_buffer_register(IO::Buffer.new(4096)) if Fiber.scheduler
        w.write(Marshal.dump(report))
        w.close
      end
      w.close
      child = Marshal.load(r.read)
      r.close
      Process.wait(pid)
      assert_equal 1, s.io_buffer_stats[:registered], "the parent's registration stays"
      assert_predicate arena, :locked?
    end
    assert_equal false, child[0], "the child's copy of the buffer is unlocked"
    assert_equal [false, 0, true], child, "no registration inherited; the child registers anew"
  end

  def test_table_full_returns_false
    run_scheduler do |s|
      buffers = []
      results = 1025.times.map do
        buffers << (b = IO::Buffer.new(64))
        s.io_buffer_register(b)
      end
      assert_equal [true] * 1024 + [false], results
      refute_predicate buffers.last, :locked?, "a refused buffer is not locked"
      buffers.each { |b| s.io_buffer_unregister(b) }
      assert_equal 0, s.io_buffer_stats[:registered]
    end
  end

  # Without CAP_IPC_LOCK, pinned memory counts against RLIMIT_MEMLOCK:
  # beyond it the kernel says ENOMEM, the hook false, and I/O still works.
  def test_memlock_exhaustion_returns_false
    omit "needs root to drop to another user" unless Process.euid == 0
    nobody = Etc.getpwnam("nobody") rescue omit("no user nobody")
    r, w = IO.pipe
    pid = fork do
      r.close
      Process.setrlimit(:MEMLOCK, 1 << 20)  # the ring's own memory fits
      Process::GID.change_privilege(nobody.gid)
      Process::UID.change_privilege(nobody.uid)
      result = nil
      Thread.new do
        s = IO::Uring::Scheduler.new
        Fiber.set_scheduler(s)
        Fiber.schedule do
          big = IO::Buffer.new(8 << 20)
          registered = s.io_buffer_register(big)
          pr, pw = IO.pipe
          Fiber.schedule { pw.write("still works") }
          big.read(pr, 11)
          result = [registered, big.locked?, big.get_string(0, 11), s.io_buffer_stats[:refusals]]
        end
      end.join
      w.write(Marshal.dump(result))
      w.close
      exit!(0)
    end
    w.close
    report = r.read
    _, status = Process.wait2(pid)
    assert_predicate status, :success?
    assert_equal [false, false, "still works", 1], Marshal.load(report)
  ensure
    r&.close; w&.close unless w&.closed?
  end
end
