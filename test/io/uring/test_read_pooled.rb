# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'timeout'
require_relative 'uring_test_helper'

# IO::Uring::Scheduler#read_pooled (ext/io/uring/pbuf.c): reads into
# buffers the kernel picks from the scheduler's pool when data arrives, so
# that waiting readers hold no buffer.
class TestIOUringReadPooled < Test::Unit::TestCase
  include IOUringTestHelper

  # The block's value, from a fiber of a new scheduler (set up with +pool+,
  # [count, size], if given); fails unless the block ran to its end.
  def run_scheduler(pool: nil)
    result = nil
    finished = false
    Thread.new do
      scheduler = IO::Uring::Scheduler.new
      Fiber.set_scheduler(scheduler)
      scheduler.read_pool(*pool) if pool
      Fiber.schedule { result = yield scheduler; finished = true }
    end.join(30) or flunk("the scheduler thread hung")
    assert finished, "the scheduled block did not run to its end"
    result
  end

  def test_reads_sockets_and_pipes
    a, b = UNIXSocket.pair
    r, w = IO.pipe
    server = TCPServer.new("127.0.0.1", 0)
    client = TCPSocket.new("127.0.0.1", server.addr[1])
    peer = server.accept
    result = run_scheduler do |s|
      Fiber.schedule { b.write("unix"); w.write("pipe data"); client.write("tcp") }
      got = [s.read_pooled(a), s.read_pooled(r, 4), s.read_pooled(r), s.read_pooled(peer)]
      got << s.read_pooled(a, 0)
      b.close
      got << s.read_pooled(a)
      [got, got.first.encoding, s.read_pool_stats]
    end
    assert_equal ["unix", "pipe", " data", "tcp", "", nil], result[0]
    assert_equal Encoding::BINARY, result[1]
    stats = result[2]
    assert_equal [64, 65536, 4, 0], stats.values_at(:count, :size, :reads, :fallbacks)
  ensure
    [a, b, r, w, server, client, peer].each { |io| io&.close unless io&.closed? }
  end

  def test_large_transfer_in_order
    a, b = UNIXSocket.pair
    data = Random.new(5).bytes(1 << 20)
    received = run_scheduler(pool: [4, 4096]) do |s|
      Fiber.schedule { b.write(data); b.close }
      out = +""
      while (chunk = s.read_pooled(a))
        out << chunk
      end
      out
    end
    assert_equal data.bytesize, received.bytesize
    assert_equal data, received
  ensure
    a&.close; b&.close unless b&.closed?
  end

  # 200 readers wait on 4 buffers: none holds one while waiting; every
  # message arrives, those that find the pool empty through a String of
  # their own.
  def test_many_waiting_readers_share_a_small_pool
    pairs = 200.times.map { UNIXSocket.pair }
    got = {}
    stats = run_scheduler(pool: [4, 4096]) do |s|
      readers = pairs.each_with_index.map do |(x, _), i|
        Fiber.schedule do
          # A partly used buffer may take only part of a message.
          message = +""
          message << s.read_pooled(x) while message.bytesize < "message #{i} ".bytesize * 10
          got[i] = message
        end
      end
      waiting = s.read_pool_stats
      pairs.each_with_index { |(_, y), i| y.write("message #{i} " * 10) }
      sleep 0.001 while readers.any?(&:alive?)
      [waiting, s.read_pool_stats]
    end
    assert_equal 200, got.size
    got.each { |i, message| assert_equal "message #{i} " * 10, message }
    assert_equal 0, stats[0][:in_use], "waiting readers hold no buffer"
    assert_operator stats[1][:reads] + stats[1][:fallbacks], :>=, 200
    assert_operator stats[1][:in_use], :<=, 1, "every buffer went back (one may be partly consumed)"
  ensure
    pairs.flatten.each(&:close)
  end

  def test_interrupts_leave_the_pool_whole
    r, w = IO.pipe
    r2, w2 = IO.pipe
    result = run_scheduler(pool: [2, 4096]) do |s|
      f = Fiber.schedule { s.read_pooled(r) rescue $! }
      Fiber.schedule { f.raise(RuntimeError, "interrupted") }
      timed_out = (Timeout.timeout(0.02) { s.read_pooled(r) } rescue $!)
      closed = nil
      Fiber.schedule { closed = (s.read_pooled(r2) rescue $!) }
      r2.close
      sleep 0.001 until closed
      w.write("after")
      [timed_out.class, closed.class, s.read_pooled(r), s.read_pool_stats[:in_use]]
    end
    assert_equal [Timeout::Error, IOError, "after"], result[0, 3]
    assert_operator result[3], :<=, 1
  ensure
    [r, w, r2, w2].each { |io| io.close unless io.closed? }
  end

  def test_bad_arguments
    r, w = IO.pipe
    run_scheduler do |s|
      assert_raise(ArgumentError) { s.read_pooled(r, -1) }
      assert_raise(TypeError) { s.read_pooled("not an io") }
      assert_raise(IOError) { s.read_pooled(w) }
      closed = IO.pipe.each(&:close).first
      assert_raise(IOError) { s.read_pooled(closed) }
      assert_raise(RuntimeError) { s.read_pool(8, 4096) }
    end
    run_scheduler do |s|
      assert_raise(ArgumentError) { s.read_pool(3, 4096) }
      assert_raise(ArgumentError) { s.read_pool(8, 1000) }
      assert_raise(ArgumentError) { s.read_pool(0, 4096) }
      assert_nil s.read_pool_stats
      s.read_pool(8, 8192)
      assert_equal [8, 8192], s.read_pool_stats.values_at(:count, :size)
    end
  ensure
    r&.close; w&.close
  end

  def test_fork_child_starts_without_a_pool
    child = run_scheduler(pool: [4, 4096]) do |s|
      r, w = IO.pipe
      pid = fork do
        r.close
        report = [Fiber.scheduler&.read_pool_stats]
        if Fiber.scheduler
          pr, pw = IO.pipe
          pw.write("child")
          report << Fiber.scheduler.read_pooled(pr)
        end
        w.write(Marshal.dump(report))
        w.close
      end
      w.close
      report = Marshal.load(r.read)
      r.close
      Process.wait(pid)
      report
    end
    assert_equal [nil, "child"], child
  end
end
