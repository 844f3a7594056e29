# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'timeout'
require 'fcntl'
require_relative 'uring_test_helper'

# IO::Uring::Scheduler's socket hooks (ext/io/uring/socket.c): socket I/O
# goes through the ring, gives what the system calls give without a
# scheduler, honours IO#timeout, and lets go of everything when it is
# interrupted.
class TestIOUringSocket < Test::Unit::TestCase
  include IOUringTestHelper

  # The block's value, from a fiber of a new scheduler; fails unless the
  # block ran to its end (a fiber lost on the way would skip the rest).
  def run_scheduler(&block)
    result = nil
    finished = false
    Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      Fiber.schedule { result = block.call; finished = true }
    end.join(30) or flunk("the scheduler thread hung")
    assert finished, "the scheduled block did not run to its end"
    result
  end

  # Counts the calls of IO::Uring::Scheduler's hooks made in the block.
  def hook_calls
    calls = Hash.new(0)
    trace = TracePoint.new(:c_call) do |tp|
      calls[tp.method_id] += 1 if tp.defined_class == IO::Uring::Scheduler
    end
    trace.enable { yield }
    calls
  end

  def test_stream_round_trip
    a, b = UNIXSocket.pair
    data = Random.new(2).bytes(1 << 20)
    received = +""
    calls = run_scheduler do
      hook_calls do
        Fiber.schedule do
          sent = 0
          sent += a.send(data.byteslice(sent, 65536), 0) while sent < data.bytesize
          a.shutdown(:WR)
        end
        while (chunk = b.recv(65536))
          received << chunk
        end
      end
    end
    assert_equal data.bytesize, received.bytesize
    assert_equal data, received
    assert_operator calls[:socket_send], :>=, 16
    assert_operator calls[:socket_recv], :>=, 16
    assert_equal 1, calls[:socket_shutdown]
    assert_equal 0, calls[:io_wait], "no readiness waits: the ring does the I/O"
  ensure
    a&.close; b&.close
  end

  def test_udp_recvfrom_and_send_to
    receiver = UDPSocket.new
    receiver.bind("127.0.0.1", 0)
    sender = UDPSocket.new
    sender.bind("127.0.0.1", 0)
    result = run_scheduler do
      Fiber.schedule { sender.send("one", 0, "127.0.0.1", receiver.addr[1]) }
      first = receiver.recvfrom(100)
      sender.send("two", 0, Socket.sockaddr_in(receiver.addr[1], "127.0.0.1"))
      [first, receiver.recvfrom(2)]
    end
    expected_from = ["AF_INET", sender.addr[1], "127.0.0.1", "127.0.0.1"]
    assert_equal [["one", expected_from], ["tw", expected_from]], result
  ensure
    receiver&.close; sender&.close
  end

  def test_unix_recvfrom
    a, b = UNIXSocket.pair
    b.send("x", 0)
    assert_equal ["x", ["AF_UNIX", ""]], run_scheduler { a.recvfrom(10) }
    assert_equal ["x", ["AF_UNIX", ""]], (b.send("x", 0); a.recvfrom(10)), "the same without a scheduler"
  ensure
    a&.close; b&.close
  end

  def test_accept_connect_and_peer
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    result = run_scheduler do
      calls = hook_calls do
        client = nil
        Fiber.schedule { client = TCPSocket.new("127.0.0.1", port) }
        peer = server.accept
        sleep 0.001 until client
        flags = peer.fcntl(Fcntl::F_GETFL)
        info = [peer.class, peer.peeraddr[1] == client.addr[1], peer.close_on_exec?, flags & File::NONBLOCK != 0]
        client.send("ping", 0)
        info << peer.recv(10)
        peer.close; client.close
        info
      end
      [calls[:socket_accept], calls[:socket_connect], calls[:io_wait]]
    end
    assert_equal [1, 1, 0], result
  ensure
    server&.close
  end

  def test_accepted_socket_is_like_stock
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    stock_client = TCPSocket.new("127.0.0.1", port)
    stock = server.accept
    info = ->(s) { [s.class, s.close_on_exec?, s.fcntl(Fcntl::F_GETFL) & File::NONBLOCK, s.local_address.ip_port] }
    ours = run_scheduler do
      client = nil
      Fiber.schedule { client = TCPSocket.new("127.0.0.1", port) }
      peer = server.accept
      sleep 0.001 until client
      r = info.(peer)
      peer.close; client.close
      r
    end
    assert_equal info.(stock), ours
  ensure
    server&.close; stock&.close; stock_client&.close
  end

  def test_sysaccept
    server = UNIXServer.new(path = "/tmp/test_uring_socket_#{$$}.sock")
    fd = run_scheduler do
      Fiber.schedule { UNIXSocket.new(path).close }
      server.sysaccept
    end
    assert_kind_of Integer, fd
    IO.for_fd(fd).close
  ensure
    server&.close
    File.unlink(path) rescue nil
  end

  def test_errors_as_stock
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    stock = assert_raise(Errno::ECONNREFUSED) { TCPSocket.new("127.0.0.1", port) }
    ours = run_scheduler { assert_raise(Errno::ECONNREFUSED) { TCPSocket.new("127.0.0.1", port) } }
    assert_equal stock.message, ours.message

    a, b = UNIXSocket.pair
    b.close
    stock = assert_raise(Errno::EPIPE) { a.send("x", 0) }
    ours = run_scheduler { assert_raise(Errno::EPIPE) { a.send("x", 0) } }
    assert_equal stock.message, ours.message

    s = Socket.new(:INET, :STREAM)
    stock = assert_raise(Errno::EINVAL) { s.accept }
    ours = run_scheduler { assert_raise(Errno::EINVAL) { s.accept } }
    assert_equal stock.message, ours.message

    stock = assert_raise(Errno::ENOTCONN) { s.recv(1) } rescue nil
    ours = run_scheduler { assert_raise(Errno::ENOTCONN) { s.recv(1) } } if stock
    assert_equal stock.message, ours.message if stock
  ensure
    a&.close; s&.close
  end

  def test_timeouts_as_stock
    a, b = UNIXSocket.pair
    server = TCPServer.new("127.0.0.1", 0)
    [a, server].each { |io| io.timeout = 0.05 }
    stock = [assert_raise(IO::TimeoutError) { a.recv(1) }, assert_raise(IO::TimeoutError) { server.accept }]
    ours = run_scheduler do
      t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      r = [assert_raise(IO::TimeoutError) { a.recv(1) }, assert_raise(IO::TimeoutError) { a.recvfrom(1) },
           assert_raise(IO::TimeoutError) { server.accept }]
      assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - t, :<, 5
      r
    end
    assert_equal stock.map(&:message) + [stock[0].message], [ours[0], ours[2], ours[1]].map(&:message)

    a.timeout = 0.05
    a.setsockopt(:SOCKET, :SNDBUF, 4096)
    chunk = "x" * 65536
    stock = assert_raise(IO::TimeoutError) { loop { a.send(chunk, 0) } }
    b.read_nonblock(1 << 20) rescue nil while IO.select([b], nil, nil, 0)
    ours = run_scheduler { assert_raise(IO::TimeoutError) { loop { a.send(chunk, 0) } } }
    assert_equal stock.message, ours.message
  ensure
    a&.close; b&.close; server&.close
  end

  # IO#read and IO#write (#io_read, #io_write) honour IO#timeout too, with
  # the error a blocking read or write gives without a scheduler.
  def test_io_read_and_write_timeouts_as_stock
    r, w = IO.pipe
    r.timeout = w.timeout = 0.05
    big = "x" * (1 << 20)
    stock = [assert_raise(IO::TimeoutError) { r.read(1) }, assert_raise(IO::TimeoutError) { w.write(big) }]
    r.read_nonblock(1 << 20) rescue nil while IO.select([r], nil, nil, 0)
    ours = run_scheduler do
      [assert_raise(IO::TimeoutError) { r.read(1) }, assert_raise(IO::TimeoutError) { r.readpartial(1) },
       assert_raise(IO::TimeoutError) { w.write(big) }]
    end
    assert_equal [stock[0].message] * 2 + [stock[1].message], ours.map(&:message)
    r.read_nonblock(1 << 20) rescue nil while IO.select([r], nil, nil, 0)
    r.timeout = 10
    assert_equal "in time", run_scheduler { Fiber.schedule { w.write("in time") }; r.read(7) }
  ensure
    r&.close; w&.close
  end

  # IO#close of a socket a fiber is receiving on interrupts it, as the
  # close of a descriptor a thread waits on does.
  def test_close_interrupts_recv_and_accept
    a, b = UNIXSocket.pair
    server = TCPServer.new("127.0.0.1", 0)
    errors = run_scheduler do
      r = []
      Fiber.schedule { r << (a.recv(10) rescue $!) }
      Fiber.schedule { r << (server.accept rescue $!) }
      a.close
      server.close
      sleep 0.01 until r.size == 2
      r
    end
    assert_equal [IOError, IOError], errors.map(&:class)
    assert_equal ["stream closed in another thread"] * 2, errors.map(&:message)
  ensure
    a&.close unless a&.closed?
    b&.close
    server&.close unless server&.closed?
  end

  # Timeout and Thread#kill during a pending receive or accept: the
  # operation is cancelled, nothing is left in flight, no descriptor leaks.
  def test_interrupts
    a, b = UNIXSocket.pair
    server = TCPServer.new("127.0.0.1", 0)
    done = run_scheduler do
      assert_raise(Timeout::Error) { Timeout.timeout(0.02) { a.recv(10) } }
      assert_raise(Timeout::Error) { Timeout.timeout(0.02) { server.accept } }
      f = Fiber.schedule { a.recv(10) rescue $! }
      # From a fiber of its own: the raiser is lost when f ends (transfer).
      Fiber.schedule { f.raise(RuntimeError, "stop") }
      b.send("after", 0)
      assert_equal "after", a.recv(10), "the cancelled receive took nothing"
      :done
    end
    assert_equal :done, done
    t = Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      Fiber.schedule { server.accept }
      Fiber.schedule { a.recv(10) }
    end
    sleep 0.05
    t.kill
    assert t.join(10), "the killed thread ended"
  ensure
    a&.close; b&.close; server&.close
  end

  # A connection the kernel accepted while its fiber was being interrupted
  # is closed, not leaked (the teardown counts descriptors).
  def test_accept_interrupted_after_completion_closes_the_connection
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    clients = []
    rounds = run_scheduler do
      20.times.count do
        f = Fiber.schedule { server.accept.close rescue nil }
        clients << TCPSocket.new("127.0.0.1", port)
        Fiber.schedule { f.raise(RuntimeError, "interrupt") if f.alive? }
      end
    end
    assert_equal 20, rounds
  ensure
    clients.each(&:close)
    server&.close
  end

  def test_recv_into_frozen_or_locked_string_as_stock
    a, b = UNIXSocket.pair
    b.send("x", 0)
    stock = assert_raise(FrozenError) { a.recv(1, 0, "".freeze) }
    ours = run_scheduler { assert_raise(FrozenError) { a.recv(1, 0, "".freeze) } }
    assert_equal stock.message, ours.message
  ensure
    a&.close; b&.close
  end

  # The hooks called directly, with bad arguments: errors, not crashes.
  def test_hooks_with_bad_arguments
    a, b = UNIXSocket.pair
    run_scheduler do
      s = Fiber.scheduler
      buffer = IO::Buffer.new(8)
      assert_raise(TypeError) { s.socket_recv(a, "not a buffer", 0) }
      assert_raise(TypeError) { s.socket_recv(a, buffer, "flags") }
      assert_raise(ArgumentError) { s.socket_send(a, buffer, 0, "x" * 1000) }
      assert_equal 0, s.socket_recv(a, IO::Buffer.new(4).tap(&:free), 0)
      assert_raise(IO::Buffer::AccessError) { s.socket_recv(a, IO::Buffer.for("ro".freeze), 0) }
      r, w = IO.pipe
      w.write("p")
      assert_equal(-Errno::ENOTSOCK::Errno, s.socket_recv(r, buffer, 0))
      r.close; w.close
      closed = UNIXSocket.pair.each(&:close).first
      assert_raise(IOError) { s.socket_send(closed, buffer, 0) }
      assert_raise(TypeError) { s.socket_accept(a, nil) }
      assert_equal(-Errno::EINVAL::Errno, s.socket_shutdown(a, 99))
    end
  ensure
    a&.close; b&.close
  end
end
