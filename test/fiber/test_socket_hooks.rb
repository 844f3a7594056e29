# frozen_string_literal: true
require 'test/unit'
require 'socket'
require_relative 'scheduler'

# Fiber::Scheduler#socket_recv, #socket_send, #socket_connect,
# #socket_accept and #socket_shutdown: what ext/socket hands the hooks,
# what it makes of their results, and that a scheduler without them keeps
# the system calls.
class TestFiberSocketHooks < Test::Unit::TestCase
  # Implements the hooks with the sockets' non-blocking methods (which never
  # call a hook), records each call, and answers -EAGAIN where the call
  # would block, so the caller's wait-and-retry path runs.  Results queued
  # in +results+ (a value or a callable) are returned first instead.
  class HookScheduler < Scheduler
    attr_reader :calls
    attr_accessor :results

    def initialize(...)
      super
      @calls = []
      @results = []
    end

    def socket_recv(socket, buffer, flags, from = nil)
      @calls << [:socket_recv, socket, buffer.size, flags, from&.dup, buffer.readonly?]
      return queued(buffer) unless @results.empty?
      message, address, = socket.recvmsg_nonblock(buffer.size, flags, exception: false)
      return -Errno::EAGAIN::Errno if message == :wait_readable
      return 0 if message.nil?
      buffer.set_string(message)
      from&.replace(address.to_sockaddr) if address && !address.to_sockaddr.empty? && address.afamily != Socket::AF_UNSPEC
      message.bytesize
    rescue SystemCallError => e
      -e.errno
    end

    def socket_send(socket, buffer, flags, destination = nil)
      @calls << [:socket_send, socket, buffer.size, flags, destination, buffer.readonly?, destination&.frozen?]
      return queued(buffer) unless @results.empty?
      result = socket.sendmsg_nonblock(buffer.get_string, flags, destination, exception: false)
      result == :wait_writable ? -Errno::EAGAIN::Errno : result
    rescue SystemCallError => e
      -e.errno
    end

    def socket_connect(socket, address)
      @calls << [:socket_connect, socket, address]
      return queued(nil) unless @results.empty?
      result = raw(socket).connect_nonblock(address, exception: false)
      result == :wait_writable ? -Errno::EINPROGRESS::Errno : 0
    rescue SystemCallError => e
      -e.errno
    end

    def socket_accept(socket, address)
      @calls << [:socket_accept, socket, address.dup]
      return queued(nil) unless @results.empty?
      peer, peer_address = raw(socket).accept_nonblock(exception: false)
      return -Errno::EAGAIN::Errno if peer == :wait_readable
      peer.autoclose = false
      address.replace(peer_address.to_sockaddr)
      peer.fileno
    rescue SystemCallError => e
      -e.errno
    end

    def socket_shutdown(socket, how)
      @calls << [:socket_shutdown, socket, how]
      return queued(nil) unless @results.empty?
      Fiber.blocking { raw(socket).shutdown(how) }
      0
    rescue SystemCallError => e
      -e.errno
    end

    def hooks
      @calls.map(&:first)
    end

    private

    def queued(buffer)
      result = @results.shift
      result.respond_to?(:call) ? result.call(buffer) : result
    end

    # A Socket on the same descriptor, for the methods only Socket has;
    # it does not close the descriptor.
    def raw(socket)
      Socket.for_fd(socket.fileno).tap { |s| s.autoclose = false }
    end
  end

  # Runs the block in a fiber of a new +klass+ scheduler, and returns its
  # value.  Fibers for +before+ and +after+ (procs) are scheduled before
  # and after the block's: each runs until it first waits.  (The test
  # scheduler's Fiber.schedule transfers: nested calls would lose the
  # outer fiber.)
  def run_with(klass = HookScheduler, before: [], after: [])
    result = nil
    finished = false
    Thread.new do
      scheduler = klass.new
      Fiber.set_scheduler(scheduler)
      before.each { |b| Fiber.schedule(&b) }
      Fiber.schedule { result = yield scheduler; finished = true }
      after.each { |b| Fiber.schedule(&b) }
    end.join(30) or flunk("the scheduler thread hung")
    assert finished, "the scheduled block did not run to its end"
    result
  end

  def test_recv
    a, b = UNIXSocket.pair
    calls = nil
    data = run_with(after: [-> { b.send("hello", 0) }]) do |s|
      result = a.recv(100)
      calls = s.calls.select { |c| c[0] == :socket_recv }
      result
    end
    assert_equal "hello", data
    assert_equal Encoding::BINARY, data.encoding
    # The first call finds nothing (-EAGAIN), the caller waits with
    # #io_wait and calls again.
    assert_operator calls.size, :>=, 2
    calls.each do |_, socket, size, flags, from, readonly|
      assert_same a, socket
      assert_equal [100, 0, nil, false], [size, flags, from, readonly]
    end
  ensure
    a&.close; b&.close
  end

  def test_recv_flags_and_buffer
    a, b = UNIXSocket.pair
    b.send("peekaboo", 0)
    buffer = +"xx"
    result = run_with do |s|
      [a.recv(4, Socket::MSG_PEEK), a.recv(100, 0, buffer), s.calls.map { |c| c[3] }]
    end
    assert_equal ["peek", "peekaboo", [Socket::MSG_PEEK, 0]], result
    assert_equal "peekaboo", buffer
  ensure
    a&.close; b&.close
  end

  def test_recv_end_of_stream
    a, b = UNIXSocket.pair
    b.close
    assert_nil run_with { a.recv(10) }
  ensure
    a&.close
  end

  def test_recv_empty_datagram
    a, b = UNIXSocket.pair(:DGRAM)
    b.send("", 0)
    assert_equal "", run_with { a.recv(10) }
  ensure
    a&.close; b&.close
  end

  def test_recvfrom_udp
    receiver = UDPSocket.new
    receiver.bind("127.0.0.1", 0)
    sender = UDPSocket.new
    sender.bind("127.0.0.1", 0)
    sender.send("datagram", 0, "127.0.0.1", receiver.addr[1])
    message, address = run_with do |s|
      result = receiver.recvfrom(100)
      from = s.calls.find { |c| c[0] == :socket_recv }[4]
      assert_equal "".b, from, "the hook gets an empty binary String to fill"
      result
    end
    assert_equal "datagram", message
    assert_equal ["AF_INET", sender.addr[1], "127.0.0.1", "127.0.0.1"], address
  ensure
    receiver&.close; sender&.close
  end

  def test_socket_recvfrom_gives_addrinfo
    receiver = Socket.new(:INET, :DGRAM)
    receiver.bind(Socket.sockaddr_in(0, "127.0.0.1"))
    sender = UDPSocket.new
    sender.send("x", 0, "127.0.0.1", receiver.local_address.ip_port)
    message, addrinfo = run_with { receiver.recvfrom(10) }
    assert_equal "x", message
    assert_kind_of Addrinfo, addrinfo
    assert_equal sender.addr[1], addrinfo.ip_port
  ensure
    receiver&.close; sender&.close
  end

  def test_recv_errno_raises_as_stock
    a, b = UNIXSocket.pair
    error = run_with do |s|
      s.results << -Errno::ECONNRESET::Errno
      assert_raise(Errno::ECONNRESET) { a.recv(10) }
    end
    assert_equal "Connection reset by peer - recvfrom(2)", error.message
  ensure
    a&.close; b&.close
  end

  def test_recv_result_larger_than_buffer_raises
    a, b = UNIXSocket.pair
    error = run_with do |s|
      s.results << 11
      assert_raise(IOError) { a.recv(10) }
    end
    assert_match(/socket_recv returned 11 for a buffer of 10 bytes/, error.message)
  ensure
    a&.close; b&.close
  end

  # The buffer wraps the caller's String only while the hook runs.
  def test_recv_buffer_is_released
    a, b = UNIXSocket.pair
    kept = nil
    string = +""
    run_with do |s|
      s.results << ->(buffer) { kept = buffer; buffer.set_string("ab"); 2 }
      a.recv(10, 0, string)
      string << "c"       # not locked any more
    end
    assert_equal "abc", string
    assert_predicate kept, :null?
  ensure
    a&.close; b&.close
  end

  def test_recv_hook_raising_unlocks_the_string
    a, b = UNIXSocket.pair
    string = +""
    run_with do |s|
      s.results << ->(_) { raise ArgumentError, "from the hook" }
      assert_raise_with_message(ArgumentError, "from the hook") { a.recv(10, 0, string) }
      string << "still writable"
    end
    assert_equal "still writable", string
  ensure
    a&.close; b&.close
  end

  def test_send
    a, b = UNIXSocket.pair
    calls = run_with do |s|
      assert_equal 5, a.send("hello", 0)
      s.calls
    end
    assert_equal "hello", b.recv(10)
    assert_equal [[:socket_send, a, 5, 0, nil, true, nil]], calls
  ensure
    a&.close; b&.close
  end

  def test_send_waits_on_eagain
    a, b = UNIXSocket.pair
    a.setsockopt(:SOCKET, :SNDBUF, 4096)
    data = Random.new(1).bytes(256 * 1024)
    received = +""
    receiver = -> { received << b.recv(65536) while received.bytesize < data.bytesize }
    run_with(after: [receiver]) do |s|
      sent = 0
      sent += a.send(data.byteslice(sent..), 0) while sent < data.bytesize
      assert_operator s.calls.count { |c| c[0] == :socket_send }, :>, 2, "a send answered -EAGAIN and was retried"
    end
    assert_equal data, received
  ensure
    a&.close; b&.close
  end

  # The kernel may read the bytes while the fiber is suspended: another
  # fiber changing the String must not change what is sent.
  def test_send_sees_a_frozen_view
    a, b = UNIXSocket.pair
    message = +"original"
    run_with do |s|
      s.results << ->(buffer) do
        message.replace("changed!")
        a.write(buffer.get_string)
      end
      a.send(message, 0)
    end
    assert_equal "original", b.read_nonblock(100)
    assert_equal "changed!", message
  ensure
    a&.close; b&.close
  end

  def test_send_to_address
    receiver = UDPSocket.new
    receiver.bind("127.0.0.1", 0)
    sender = UDPSocket.new
    address = Socket.sockaddr_in(receiver.addr[1], "127.0.0.1")
    calls = run_with do |s|
      sender.send("one", 0, address)
      sender.send("two", 0, "127.0.0.1", receiver.addr[1])
      s.calls
    end
    assert_equal %w[one two], [receiver.recv(10), receiver.recv(10)]
    assert_equal [address, address], calls.map { |c| c[4] }
    assert_equal [true, true], calls.map { |c| c[6] }, "destination is frozen"
  ensure
    receiver&.close; sender&.close
  end

  def test_send_errno_raises_as_stock
    a, b = UNIXSocket.pair
    b.close
    error = run_with { assert_raise(Errno::EPIPE) { a.send("x", 0) } }
    assert_equal "Broken pipe - send(2)", error.message
  ensure
    a&.close
  end

  def test_send_result_larger_than_message_raises
    a, b = UNIXSocket.pair
    run_with do |s|
      s.results << 4
      assert_raise_with_message(IOError, /socket_send returned 4 for 3 bytes/) { a.send("abc", 0) }
    end
  ensure
    a&.close; b&.close
  end

  def test_accept_and_connect
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    accepted = client = nil
    calls = run_with(before: [-> { accepted = server.accept }]) do |s|
      client = TCPSocket.new("127.0.0.1", port)
      s.calls
    end
    assert_kind_of TCPSocket, accepted
    assert_equal client.addr[1], accepted.peeraddr[1]
    assert_equal client.addr[1], accepted.remote_address.ip_port
    assert_predicate accepted, :close_on_exec?
    client.write("ping")
    assert_equal "ping", accepted.readpartial(10)
    connect = calls.find { |c| c[0] == :socket_connect }
    assert_equal Socket.sockaddr_in(port, "127.0.0.1"), connect[2]
    assert_predicate connect[2], :frozen?
    accept = calls.find { |c| c[0] == :socket_accept }
    assert_same server, accept[1]
    assert_equal "".b, accept[2]
  ensure
    server&.close; accepted&.close; client&.close
  end

  def test_sysaccept_and_socket_connect
    server = Socket.new(:INET, :STREAM)
    server.bind(Socket.sockaddr_in(0, "127.0.0.1"))
    server.listen(5)
    fd = nil
    client = Socket.new(:INET, :STREAM)
    addrinfo = nil
    run_with(before: [-> { fd, addrinfo = server.sysaccept }]) do
      assert_equal 0, client.connect(server.local_address)
    end
    assert_kind_of Integer, fd
    assert_equal client.local_address.ip_port, addrinfo.ip_port
    peer = Socket.for_fd(fd)
    client.write("x")
    assert_equal "x", peer.recv(1)
  ensure
    server&.close; client&.close; peer&.close
  end

  def test_connect_refused_raises_as_stock
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    stock = assert_raise(Errno::ECONNREFUSED) { TCPSocket.new("127.0.0.1", port) }
    hooks = nil
    error = run_with do |s|
      e = assert_raise(Errno::ECONNREFUSED) { TCPSocket.new("127.0.0.1", port) }
      hooks = s.hooks
      e
    end
    assert_equal stock.message, error.message
    assert_include hooks, :socket_connect
  end

  def test_connect_with_timeout_keeps_io_wait
    server = TCPServer.new("127.0.0.1", 0)
    hooks = run_with do |s|
      TCPSocket.new("127.0.0.1", server.addr[1], connect_timeout: 10).close
      s.hooks
    end
    refute_includes hooks, :socket_connect
  ensure
    server&.close
  end

  def test_accept_emfile_result_raises
    server = TCPServer.new("127.0.0.1", 0)
    run_with do |s|
      s.results.push(-Errno::EMFILE::Errno, -Errno::EMFILE::Errno)
      assert_raise_with_message(Errno::EMFILE, /accept\(2\)/) { server.accept }
      assert_equal 2, s.hooks.count(:socket_accept), "retried once after GC, as stock"
    end
  ensure
    server&.close
  end

  def test_shutdown
    a, b = UNIXSocket.pair
    calls = run_with do |s|
      a.shutdown(:WR)
      s.calls
    end
    assert_equal [[:socket_shutdown, a, Socket::SHUT_WR]], calls
    assert_nil b.recv(1)
    run_with do |s|
      s.results << -Errno::ENOTCONN::Errno
      assert_raise_with_message(Errno::ENOTCONN, /shutdown\(2\)/) { a.shutdown }
    end
  ensure
    a&.close; b&.close
  end

  def test_non_blocking_methods_do_not_call_hooks
    a, b = UNIXSocket.pair
    hooks = run_with do |s|
      b.send("x", 0) rescue nil
      s.calls.clear
      a.recv_nonblock(10)
      a.recv_nonblock(10, exception: false)
      a.sendmsg("y")
      b.recvmsg(10)
      s.hooks
    end
    assert_equal [], hooks
  ensure
    a&.close; b&.close
  end

  # A scheduler without the hooks: the system calls, waits through #io_wait.
  def test_without_hooks
    a, b = UNIXSocket.pair
    server = TCPServer.new("127.0.0.1", 0)
    peer = client = nil
    hooks = []
    result = run_with(Scheduler, before: [-> { peer = server.accept }], after: [-> { b.send("late", 0) }]) do |s|
      hooks = s.methods.grep(/\Asocket_/)
      client = TCPSocket.new("127.0.0.1", server.addr[1])
      a.recv(10)
    end
    assert_equal [], hooks
    assert_equal "late", result
    assert_kind_of TCPSocket, peer
    assert_equal client.addr[1], peer.peeraddr[1]
  ensure
    a&.close; b&.close; server&.close; peer&.close; client&.close
  end

  # Fiber.blocking: no scheduler, no hooks.
  def test_blocking_fiber_does_not_call_hooks
    a, b = UNIXSocket.pair
    b.send("x", 0)
    hooks = run_with do |s|
      Fiber.blocking { a.recv(1) }
      s.hooks
    end
    assert_equal [], hooks
  ensure
    a&.close; b&.close
  end
end
