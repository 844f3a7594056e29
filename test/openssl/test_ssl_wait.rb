# frozen_string_literal: true
require_relative "utils"

if defined?(OpenSSL::SSL)

# SSLSocket's waits: the buffer of #sysread is locked only while libssl
# writes into it, and errno is taken right after each SSL_* call (what
# ruby/openssl fixed in 3.3.1 and 4.0.1), with each version's messages:
# 3.3's, and 4.0's (which name the call, and word IO#timeout their own way).
class OpenSSL::TestSSLWait < OpenSSL::SSLTestCase
  OPENSSL_4 = OpenSSL::VERSION.to_i >= 4

  # A wait that raises (here IO#timeout) used to leave the caller's String
  # locked: "can't modify string; temporarily locked" for good.
  def test_sysread_timeout_leaves_the_buffer_usable
    omit "does not support timeout" unless IO.method_defined?(:timeout)
    start_server do |port|
      server_connect(port) do |ssl|
        buf = +"previous"
        ssl.timeout = 0.1
        e = assert_raise(IO::TimeoutError) { ssl.sysread(100, buf) }
        assert_equal(OPENSSL_4 ? "Timed out while waiting to become readable!" :
                       "Timed out waiting for IO to become readable!", e.message)
        buf << "!" # not locked
        ssl.timeout = nil
        ssl.syswrite("line\n")
        assert_equal("line\n", ssl.sysread(100, buf))
        buf << "!"
      end
    end
  end

  # The same with Timeout (Thread#raise) around a blocking read.
  def test_sysread_interrupted_leaves_the_buffer_usable
    start_server do |port|
      server_connect(port) do |ssl|
        buf = +""
        assert_raise(Timeout::Error) { Timeout.timeout(0.1) { ssl.sysread(100, buf) } }
        buf.replace("usable")
        assert_equal("usable", buf)
      end
    end
  end

  # The buffer is not locked during the wait: another thread may change
  # it.  If it shrank, the read refuses to write past it.
  def test_sysread_buffer_shrunk_during_the_wait
    start_server do |port|
      server_connect(port) do |ssl|
        buf = +("x" * 4096)
        reader = Thread.new { Thread.current.report_on_exception = false; ssl.sysread(4096, buf) }
        sleep 0.1 until reader.status == "sleep"
        buf.clear
        ssl.syswrite("line\n")
        e = assert_raise(OpenSSL::SSL::SSLError) { reader.value }
        assert_equal("read buffer was modified", e.message)
      end
    end
  end

  # SSL_connect fails on a bare close: the message shows the errno of the
  # failed call (0: end of file), not one that getpeername(2) left behind.
  def test_connect_error_shows_its_own_errno
    server = TCPServer.new("127.0.0.1", 0)
    th = Thread.new do
      s = server.accept
      s.readpartial(16384) # the ClientHello, so the close is a FIN
      s.close
    end
    sock = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
    ssl = OpenSSL::SSL::SSLSocket.new(sock)
    e = assert_raise(OpenSSL::SSL::SSLError) { ssl.connect }
    assert_match(/\ASSL_connect (SYSCALL )?returned=\d+ errno=0 /, e.message)
  ensure
    th&.join
    sock&.close
    server&.close
  end

  def server_connect(port)
    sock = TCPSocket.new("127.0.0.1", port)
    ssl = OpenSSL::SSL::SSLSocket.new(sock)
    ssl.sync_close = true
    ssl.connect
    yield ssl
  ensure
    ssl ? ssl.close : sock&.close
  end

  # A reset during the read: the errno of the read, with stock's message.
  def test_sysread_connection_reset
    server = TCPServer.new("127.0.0.1", 0)
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.cert = @svr_cert
    ctx.key = @svr_key
    th = Thread.new do
      s = OpenSSL::SSL::SSLSocket.new(server.accept, ctx)
      s.accept
      s.io.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
      sleep 0.1
      s.io.close
    end
    sock = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
    ssl = OpenSSL::SSL::SSLSocket.new(sock)
    ssl.connect
    e = assert_raise(Errno::ECONNRESET) { ssl.sysread(100) }
    assert_equal(OPENSSL_4 ? "Connection reset by peer - SSL_read" : "Connection reset by peer", e.message)
  ensure
    th&.join
    sock&.close
    server&.close
  end
end

end
