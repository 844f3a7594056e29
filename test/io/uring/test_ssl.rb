# frozen_string_literal: false
#
# OpenSSL::SSL::SSLSocket on the scheduler transport under
# IO::Uring::Scheduler: the ciphertext moves through #socket_recv and
# #socket_send.  Where a behaviour is stock's, the same scenario runs with
# SSLContext#scheduler_transport = false (the socket BIO, libssl doing
# read(2)/write(2) as stock does) and the results are compared.
require 'test/unit'
require 'timeout'
require 'socket'
require 'digest'
require_relative 'uring_test_helper'
begin
  require 'openssl'
rescue LoadError
end

class TestIOUringSSL < Test::Unit::TestCase
  include IOUringTestHelper

  def setup
    omit "openssl is not available" unless defined?(OpenSSL::SSL)
    # The scheduler transport: patch 0014 of either series.
    omit "openssl has no scheduler transport" unless OpenSSL::SSL::SSLContext.method_defined?(:scheduler_transport=)
    super
  end

  def self.credentials
    @credentials ||= begin
      key = OpenSSL::PKey::EC.generate("prime256v1")
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = 1
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=localhost")
      cert.public_key = key
      cert.not_before = Time.now - 3600
      cert.not_after = Time.now + 86400
      cert.sign(key, "SHA256")
      [key, cert]
    end
  end

  def server_context(transport: true, **opts)
    key, cert = self.class.credentials
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.key = key
    ctx.cert = cert
    ctx.scheduler_transport = transport
    opts.each { |k, v| ctx.public_send("#{k}=", v) }
    ctx
  end

  def client_context(transport: true, **opts)
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.scheduler_transport = transport
    opts.each { |k, v| ctx.public_send("#{k}=", v) }
    ctx
  end

  # Runs the block in a fiber of a new thread under IO::Uring::Scheduler;
  # returns or raises what it did.
  def under_scheduler(timeout: 30)
    result = error = nil
    th = Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      Fiber.schedule do
        result = yield
      rescue Exception => e
        error = e
      end
    end
    th.join(timeout) or (th.kill; flunk "the scheduler thread hung")
    raise error if error
    result
  end

  # A connected pair, both ends started in fibers of the current
  # scheduler: [client, server].  `tcp` picks TCP loopback over a UNIX
  # socket pair.
  def ssl_pair(tcp: false, transport: true, server_opts: {}, client_opts: {})
    if tcp
      serv = TCPServer.new("127.0.0.1", 0)
      a = TCPSocket.new("127.0.0.1", serv.local_address.ip_port)
      b = serv.accept
      serv.close
    else
      a, b = UNIXSocket.pair
    end
    accepted = Thread::Queue.new
    Fiber.schedule do
      s = OpenSSL::SSL::SSLSocket.new(b, server_context(transport: transport, **server_opts))
      s.sync_close = true
      s.accept
      accepted << s
    rescue Exception => e
      accepted << e
    end
    c = OpenSSL::SSL::SSLSocket.new(a, client_context(transport: transport, **client_opts))
    c.sync_close = true
    c.connect
    s = accepted.pop
    raise s if s.is_a?(Exception)
    [c, s]
  end

  def with_pair(**kw)
    c, s = ssl_pair(**kw)
    yield c, s
  ensure
    c&.io&.close unless c&.io&.closed?
    s&.io&.close unless s&.io&.closed?
  end

  # The pattern a byte stream is checked against: position-dependent.
  def pattern(offset, length)
    start = offset / 8
    s = (start...(start + length / 8 + 2)).map { |i| [i].pack("Q>") }.join
    s.byteslice(offset % 8, length)
  end

  def test_transport_is_chosen_at_the_handshake
    fresh = OpenSSL::SSL::SSLSocket.new(UNIXSocket.pair.first)
    assert_nil fresh.transport
    fresh.io.close
    under_scheduler do
      with_pair { |c, s| assert_equal [:scheduler, :scheduler], [c.transport, s.transport] }
      with_pair(transport: false) { |c, s| assert_equal [:fd, :fd], [c.transport, s.transport] }
      with_pair(tcp: true) { |c, s| assert_equal [:scheduler, :scheduler], [c.transport, s.transport] }
    end
  end

  def test_no_scheduler_or_blocking_fiber_keeps_the_socket_bio
    a, b = UNIXSocket.pair
    t = Thread.new do
      s = OpenSSL::SSL::SSLSocket.new(b, server_context)
      s.accept
      s.puts "hello"
      s.transport
    ensure
      s&.close
    end
    transport = nil
    under_scheduler do
      Fiber.new(blocking: true) do
        c = OpenSSL::SSL::SSLSocket.new(a, client_context)
        c.connect
        transport = [c.transport, c.gets]
      end.resume
    end
    assert_equal [:fd, "hello\n"], transport
    assert_equal :fd, t.value
  ensure
    a&.close
    b&.close
  end

  def test_environment_opt_out
    assert_separately([{"RUBY_OPENSSL_SCHEDULER_TRANSPORT" => "0"}, "-ropenssl", "-rio/uring", "-rsocket"], <<~'RUBY')
      key = OpenSSL::PKey::EC.generate("prime256v1")
      cert = OpenSSL::X509::Certificate.new
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=x")
      cert.public_key = key; cert.not_before = Time.now; cert.not_after = Time.now + 60
      cert.sign(key, "SHA256")
      a, b = UNIXSocket.pair
      transports = []
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule do
          ctx = OpenSSL::SSL::SSLContext.new; ctx.key = key; ctx.cert = cert
          s = OpenSSL::SSL::SSLSocket.new(b, ctx); s.accept; transports << s.transport
        end
        Fiber.schedule do
          c = OpenSSL::SSL::SSLSocket.new(a); c.connect; transports << c.transport
        end
      end.join
      assert_equal [:fd, :fd], transports
    RUBY
  end

  # A blocking #sysread receives several records per call: the socket's
  # reads and writes go through the ring; the bytes arrive intact.
  def test_bulk_both_directions
    size = 4 << 20
    under_scheduler do
      with_pair(tcp: true) do |c, s|
        digests = {}
        [[c, s, :c2s], [s, c, :s2c]].each do |from, to, name|
          Fiber.schedule do
            off = 0
            while off < size
              off += from.syswrite(pattern(off, [16384, size - off].min))
            end
          end
          Fiber.schedule do
            got = +""
            buf = String.new
            got << to.sysread(65536, buf) while got.bytesize < size
            digests[name] = Digest::SHA256.hexdigest(got)
          end
        end
        sleep 0.01 until digests.size == 2
        expected = Digest::SHA256.hexdigest(pattern(0, size))
        assert_equal({c2s: expected, s2c: expected}, digests)
      end
    end
  end

  # One reader and four writers on one socket, the peer echoing: the
  # reader's fill and the writers' flushes are in flight at the same time.
  def test_full_duplex_one_reader_four_writers
    chunk = 8192
    per_writer = 256
    under_scheduler do
      with_pair do |c, s|
        echo = Fiber.schedule do
          buf = String.new
          loop { s.write(s.readpartial(65536, buf)) }
        rescue EOFError, IOError
        end
        sent = Hash.new(0)
        writers = 4.times.map do |w|
          Fiber.schedule do
            per_writer.times do |i|
              msg = [w, i].pack("NN") + (w.to_s * (chunk - 8))
              c.syswrite(msg)
              sent[w] += 1
            end
          end
        end
        received = 0
        total = 4 * per_writer * chunk
        counts = Hash.new(0)
        buf = +""
        while received < total
          buf << c.sysread(65536)
          while buf.bytesize >= chunk
            msg = buf.slice!(0, chunk)
            w, _i = msg.unpack("NN")
            assert_equal(w.to_s * (chunk - 8), msg.byteslice(8..), "message of writer #{w} intact")
            counts[w] += 1
            received += chunk
          end
        end
        assert_equal({0 => per_writer, 1 => per_writer, 2 => per_writer, 3 => per_writer}, counts)
        assert_equal(counts, sent)
      end
    end
  end

  # Fiber#raise while the reader waits in a fill, with the peer writing at
  # the same time: bytes the ring already received are kept (the transport
  # defers the exception), so the stream stays intact.
  def test_fiber_raise_during_reads_keeps_the_stream
    interrupt = Class.new(StandardError)
    size = 2 << 20
    raised = 0
    under_scheduler do
      with_pair(tcp: true) do |c, s|
        writer = Fiber.schedule do
          off = 0
          while off < size
            off += s.syswrite(pattern(off, [1000, size - off].min))
            sleep 0 if off % 7000 < 1000
          end
        end
        got = +""
        reading = false
        # only inside #sysread, wherever it is suspended
        stop = interrupting(Fiber.current, interrupt) { reading }
        buf = String.new
        while got.bytesize < size
          begin
            reading = true
            c.sysread(4096, buf)
            reading = false
            got << buf
          rescue interrupt
            reading = false
            raised += 1
            # the caller's buffer is not left locked
            buf << "x"
          end
        end
        stop.call
        sleep 0.001 while writer.alive?
        assert_equal Digest::SHA256.hexdigest(pattern(0, size)), Digest::SHA256.hexdigest(got)
      end
    end
    assert_operator raised, :>, 10
  end

  # Raises `exception` in `fiber` while the block says so, until the
  # returned proc is called: a fiber for each raise (one that calls
  # Fiber#raise is not resumed again).
  def interrupting(fiber, exception, &active)
    stop = false
    Fiber.schedule do
      until stop
        sleep 0
        Fiber.schedule { fiber.raise(exception) } if active.call
      end
    end
    -> { stop = true }
  end

  # Fiber#raise while a writer's records are being sent, and the writer
  # goes on as a caller of the socket BIO would: a #syswrite retried with
  # the same bytes (libssl then finishes its pending record), or
  # OpenSSL::Buffering#write, which keeps what #syswrite did not report in
  # its buffer and sends it with the next write.  The peer receives every
  # byte once.
  def fiber_raise_during_writes(buffered)
    interrupt = Class.new(StandardError)
    size = 4 << 20
    raised = 0
    under_scheduler do
      [true, false].map do |transport|
        with_pair(tcp: true, transport: transport) do |c, s|
          got = +""
          reader = Fiber.schedule do
            buf = String.new
            while got.bytesize < size
              got << s.sysread(65536, buf)
              sleep 0.0001 if rand < 0.05
            end
          end
          writing = false
          stop = interrupting(Fiber.current, interrupt) { writing }
          off = 0
          while off < size
            data = pattern(off, [50000, size - off].min)
            begin
              writing = true
              n = buffered ? c.write(data) : c.syswrite(data)
              writing = false
            rescue interrupt
              writing = false
              raised += 1
              # Buffering keeps the bytes: go on with the next ones
              n = buffered ? data.bytesize : retry
            end
            off += n
          end
          writing = false
          c.flush if buffered
          stop.call
          sleep 0.001 while reader.alive?
          assert_equal Digest::SHA256.hexdigest(pattern(0, size)), Digest::SHA256.hexdigest(got), "transport: #{transport}"
        end
      end
    end
    assert_operator raised, :>, 10
  end

  def test_fiber_raise_during_syswrites_keeps_the_stream
    fiber_raise_during_writes(false)
  end

  def test_fiber_raise_during_buffered_writes_keeps_the_stream
    fiber_raise_during_writes(true)
  end

  # Interrupted handshakes: Timeout while the client waits for the
  # server's flight, Fiber#raise while the server waits for the
  # ClientHello; a handshake retried after an interrupt completes.
  def test_interrupted_handshakes
    under_scheduler do
      a, b = UNIXSocket.pair
      c = OpenSSL::SSL::SSLSocket.new(a, client_context)
      assert_raise(Timeout::Error) { Timeout.timeout(0.05) { c.connect } }
      assert_equal :scheduler, c.transport
      s = OpenSSL::SSL::SSLSocket.new(b, server_context)
      server = Fiber.current
      Fiber.schedule { sleep 0.05; server.raise(RuntimeError, "stop") }
      # the ClientHello is there: the server sends its flight, then waits
      # for the client's Finished, and is interrupted there
      e = assert_raise(RuntimeError) { s.accept }
      assert_equal "stop", e.message
      done = Thread::Queue.new
      Fiber.schedule { s.accept; done << true }
      c.connect
      done.pop
      c.puts "after"
      assert_equal "after\n", s.gets
    ensure
      a&.close
      b&.close
    end
  end

  def test_timeout_during_reads_keeps_the_stream
    size = 1 << 20
    timeouts = 0
    under_scheduler do
      with_pair do |c, s|
        Fiber.schedule do
          off = 0
          while off < size
            off += s.syswrite(pattern(off, [3000, size - off].min))
            sleep 0.0005 if off % 30000 < 3000
          end
        end
        got = +""
        while got.bytesize < size
          begin
            Timeout.timeout(0.0002) { got << c.sysread(8192) }
          rescue Timeout::Error
            timeouts += 1
          end
        end
        assert_equal Digest::SHA256.hexdigest(pattern(0, size)), Digest::SHA256.hexdigest(got)
      end
    end
    assert_operator timeouts, :>, 0
  end

  # What each end sees, for one scenario, with and without the transport.
  def outcome(transport, tcp: false, **pair_opts)
    under_scheduler do
      with_pair(tcp: tcp, transport: transport, **pair_opts) do |c, s|
        r = yield(c, s)
        [c.transport, r]
      end
    end
  end

  def error_of
    yield
    :no_error
  rescue Exception => e
    [e.class, e.message]
  end

  def assert_same_as_stock(tcp: false, **pair_opts, &scenario)
    stock = outcome(false, tcp: tcp, **pair_opts, &scenario)
    transported = outcome(true, tcp: tcp, **pair_opts, &scenario)
    assert_equal [:fd, stock[1]], stock
    assert_equal [:scheduler, stock[1]], transported
    stock[1]
  end

  # What the socket BIO raises, by the openssl version: 4.0 names the call
  # in Errno messages and words IO#timeout its own way.
  OPENSSL_4 = OpenSSL::VERSION.to_i >= 4

  def stock_errno_message(message, call)
    OPENSSL_4 ? "#{message} - #{call}" : message
  end

  def stock_timeout_message(event)
    OPENSSL_4 ? "Timed out while waiting to become #{event}!" : "Timed out waiting for IO to become #{event}!"
  end

  def test_close_notify_is_eof
    r = assert_same_as_stock do |c, s|
      s.puts "bye"
      s.close
      [c.gets, error_of { c.sysread(10) }, c.read_nonblock(10, exception: false)]
    end
    assert_equal ["bye\n", [EOFError, "end of file reached"], nil], r
  end

  def test_bare_close_is_unexpected_eof
    r = assert_same_as_stock do |c, s|
      s.io.close
      error_of { c.sysread(10) }
    end
    assert_equal [OpenSSL::SSL::SSLError, "SSL_read: unexpected eof while reading"], r
  end

  def test_bare_close_with_ignore_unexpected_eof
    r = assert_same_as_stock(client_opts: {options: OpenSSL::SSL::OP_ALL | OpenSSL::SSL::OP_IGNORE_UNEXPECTED_EOF}) do |c, s|
      s.io.close
      error_of { c.sysread(10) }
    end
    assert_equal [EOFError, "end of file reached"], r
  end

  def test_reset_is_econnreset
    r = assert_same_as_stock(tcp: true) do |c, s|
      s.io.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
      s.io.close
      error_of { c.sysread(10) }
    end
    assert_equal [Errno::ECONNRESET, stock_errno_message("Connection reset by peer", "SSL_read")], r
  end

  def test_write_after_peer_close_is_epipe
    r = assert_same_as_stock do |c, s|
      s.io.close
      error_of { 10.times { c.syswrite("x" * 1000) } }
    end
    assert_equal [Errno::EPIPE, stock_errno_message("Broken pipe", "SSL_write")], r
  end

  def test_own_close_then_read_is_ebadf
    r = assert_same_as_stock do |c, s|
      c.io.close
      error_of { c.sysread(10) }
    end
    assert_equal [Errno::EBADF, stock_errno_message("Bad file descriptor", "SSL_read")], r
  end

  def test_io_timeout
    r = assert_same_as_stock do |c, s|
      c.io.timeout = 0.05
      buf = +"keep"
      e = error_of { c.sysread(10, buf) }
      buf << "writable"
      s.puts "later"
      [e, c.gets]
    end
    assert_equal [[IO::TimeoutError, stock_timeout_message("readable")], "later\n"], r
  end

  # On 3.4 the hook's own timeout message is openssl's too; on master
  # (openssl 4.0) this fails unless the transport raises openssl's.
  def test_io_timeout_writing
    r = assert_same_as_stock do |c, s|
      c.io.timeout = 0.05
      # the peer never reads: the socket fills, then the write times out
      error_of { loop { c.syswrite("x" * 16384) } }
    end
    assert_equal [IO::TimeoutError, stock_timeout_message("writable")], r
  end

  # A transfer left without a count (a throw through the hook; Fiber#kill
  # and Thread#kill likewise) may have moved bytes nobody knows of: the
  # socket raises IOError from then on rather than send bytes twice or skip
  # some.  (A throw crashed here once: its errinfo is no object.)
  def test_transfer_left_by_throw_breaks_the_stream
    throwing = Class.new(IO::Uring::Scheduler) do
      attr_accessor :throw_in_recv

      def socket_recv(*)
        throw :out if throw_in_recv
        super
      end
    end
    result = error = nil
    th = Thread.new do
      scheduler = throwing.new
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        with_pair do |c, s|
          scheduler.throw_in_recv = true
          thrown = catch(:out) { c.sysread(10); :returned }
          scheduler.throw_in_recv = false
          s.write("after")
          result = [thrown, error_of { c.sysread(10) }, c.transport]
        end
      rescue Exception => e
        error = e
      end
    end
    th.join(30) or (th.kill; flunk "the scheduler thread hung")
    raise error if error
    assert_equal [nil, [IOError, "TLS stream broken: a transfer was abandoned midway"], :scheduler], result
  end

  def test_close_from_another_fiber
    r = assert_same_as_stock do |c, s|
      Fiber.schedule { sleep 0.05; c.io.close }
      error_of { c.sysread(10) }
    end
    assert_equal [IOError, "stream closed in another thread"], r
  end

  def test_stop_never_raises_and_sync_close
    r = assert_same_as_stock do |c, s|
      # fill the socket so that close_notify cannot be sent
      begin
        loop { c.write_nonblock("x" * 16384) }
      rescue IO::WaitWritable
      end
      c.sync_close = false
      [c.close, c.io.closed?, (c.io.close; c.io.closed?)]
    end
    assert_equal [nil, false, true], r
  end

  # The non-blocking methods never suspend the fiber: another fiber that
  # is ready does not run while they are called.
  def test_nonblock_contract
    r = assert_same_as_stock do |c, s|
      ran = false
      Fiber.schedule { sleep 0; ran = true }
      results = []
      results << c.read_nonblock(10, exception: false)
      results << error_of { c.read_nonblock(10) }.first
      n = 0
      loop do
        w = c.write_nonblock("y" * 16384, exception: false)
        break results << w if w == :wait_writable
        n += w
      end
      results << ran
      Fiber.schedule do
        got = 0
        got += s.readpartial(65536).bytesize while got < n
      end
      c.wait_writable
      # libssl wants the refused record retried with the same bytes
      results << c.write_nonblock("y" * 16384)
      results
    end
    assert_equal [:wait_readable, OpenSSL::SSL::SSLErrorWaitReadable, :wait_writable, false, 16384], r
  end

  def test_nonblock_handshake
    under_scheduler do
      a, b = UNIXSocket.pair
      Fiber.schedule do
        s = OpenSSL::SSL::SSLSocket.new(b, server_context)
        s.accept
        s.puts "hi"
        s.close
      end
      c = OpenSSL::SSL::SSLSocket.new(a, client_context)
      waits = []
      until (r = c.connect_nonblock(exception: false)) == c
        waits << r
        r == :wait_readable ? c.wait_readable : c.wait_writable
      end
      assert_equal :scheduler, c.transport
      assert_include waits, :wait_readable
      assert_equal "hi\n", c.gets
    ensure
      a&.close
      b&.close
    end
  end

  # Read-ahead: records after the one read are staged; #wait_readable
  # sees them although the kernel holds nothing.
  def test_wait_readable_sees_staged_records
    under_scheduler do
      with_pair do |c, s|
        3.times { |i| s.syswrite(i.to_s * 1000) }
        sleep 0.05
        assert_equal "0" * 1000, c.sysread(1000)
        assert_equal 0, c.pending
        assert_nil c.io.wait_readable(0), "the kernel has nothing left"
        assert_same c.io, c.wait_readable(0)
        assert_equal "1" * 1000, c.sysread(1000)
        assert_equal "2" * 1000, c.read_nonblock(1000)
        assert_nil c.wait_readable(0)
      end
    end
  end

  # The handshake receives only what libssl asks for: application data
  # the peer sent right after it stays in the kernel.
  def test_handshake_does_not_read_ahead
    under_scheduler do
      with_pair do |c, s|
        s.syswrite("early")
        sleep 0.05
        assert_same c.io, c.io.wait_readable(0)
        assert_equal "early", c.sysread(10)
      end
    end
  end

  # A blocking #syswrite on the transport sends the records of as much of
  # the String as fits the buffer together (stock: one 16 KiB record per
  # call); the count says how much, as for any partial write.
  def test_syswrite_coalesces_records
    under_scheduler do
      [true, false].map do |transport|
        with_pair(transport: transport) do |c, s|
          data = pattern(0, 200_000)
          n = c.syswrite(data)
          got = +""
          got << s.sysread(65536) while got.bytesize < n
          assert_equal data.byteslice(0, n), got
          n
        end
      end
    end => [coalesced, stock]
    assert_equal 16384, stock
    assert_operator coalesced, :>=, 3 * 16384
  end

  def test_interleaved_transports_between_ends
    under_scheduler do
      with_pair(server_opts: {scheduler_transport: false}) do |c, s|
        assert_equal [:scheduler, :fd], [c.transport, s.transport]
        s.puts "a" * 100000
        assert_equal "a" * 100000 + "\n", c.gets
        c.puts "b" * 100000
        assert_equal "b" * 100000 + "\n", s.gets
      end
    end
  end

  # A transport socket later used by a thread without a scheduler.
  def test_used_without_scheduler_after_the_handshake
    c, s = under_scheduler { ssl_pair }
    assert_equal :scheduler, c.transport
    t = Thread.new { s.gets }
    c.puts "plain thread"
    assert_equal "plain thread\n", t.value
    s.puts "back"
    assert_equal "back\n", c.gets
  ensure
    c&.close
    s&.close
  end

  # openssl s_server sends a TLS 1.3 KeyUpdate asking for one back ("K"),
  # or starts a TLS 1.2 renegotiation ("R"), in the middle of the stream.
  # The client answers inside SSL_read: the transport has to send the
  # answer although the client only reads.
  def s_server_session(args, command, sent)
    omit "no openssl command" unless system("openssl version", out: File::NULL, err: File::NULL)
    # s_server's messages go through stdio: unbuffered, they can be waited for
    omit "no stdbuf command" unless system("stdbuf --version", out: File::NULL, err: File::NULL)
    key, cert = self.class.credentials
    Dir.mktmpdir do |dir|
      File.write("#{dir}/key.pem", key.private_to_pem)
      File.write("#{dir}/cert.pem", cert.to_pem)
      port = TCPServer.open("127.0.0.1", 0) { |t| t.local_address.ip_port }
      IO.popen(["stdbuf", "-o0", "openssl", "s_server", "-accept", "127.0.0.1:#{port}", "-naccept", "1",
                "-key", "#{dir}/key.pem", "-cert", "#{dir}/cert.pem", "-msg", *args],
               "r+", err: [:child, :out]) do |server|
        # each command line in its own write: s_server takes a command only
        # alone in its read of stdin
        server.sync = true
        log = +""
        reader = Thread.new { loop { log << server.readpartial(65536) } rescue nil }
        begin
          sleep 0.01 until log.include?("ACCEPT")
          under_scheduler do
            sock = TCPSocket.new("127.0.0.1", port)
            c = OpenSSL::SSL::SSLSocket.new(sock, client_context)
            c.connect
            assert_equal :scheduler, c.transport
            server.puts "before"
            assert_equal "before\n", c.gets
            # One write: in a non-blocking fiber IO#puts writes the line and
            # its newline separately (3.4's rb_writev_internal hands the
            # scheduler only the first iovec), and s_server, reading "R"
            # alone, sent it as data.
            server.write("#{command}\n")
            # s_server takes a command only alone in its read of stdin
            Timeout.timeout(20) { sleep 0.01 until log.match?(sent) }
            server.puts "after"
            assert_equal "after\n", c.gets
            yield log, c
            c.puts "from client"
            Timeout.timeout(20) { sleep 0.01 until log.include?("from client") }
          ensure
            sock&.close
          end
        ensure
          Process.kill(:TERM, server.pid)
          reader.join
        end
        log
      end
    end
  end

  def test_key_update_mid_stream
    require 'tmpdir'
    log = s_server_session(["-tls1_3"], "K", />>> .*KeyUpdate/) { }
    # libssl answers with its own KeyUpdate when it next writes; the server
    # reads the client's data under the new keys
    assert_match(/>>> .*KeyUpdate.*<<< .*KeyUpdate.*from client/m, log)
  end

  def test_renegotiation_mid_stream
    require 'tmpdir'
    log = s_server_session(["-tls1_2"], "R", />>> .*HelloRequest/) do |server_log, c|
      # The client's new ClientHello leaves during its reads, before it
      # writes.  (When the HelloRequest and the data come in one read,
      # libssl may start the renegotiation in the next call: a
      # non-blocking read, which also drives the handshake on.)
      Timeout.timeout(20) do
        until server_log.scan(/<<< .*ClientHello/).size >= 2
          assert_equal :wait_readable, c.read_nonblock(1, exception: false)
          sleep 0.01
        end
      end
    end
    assert_match(/>>> .*HelloRequest.*<<< .*ClientHello.*from client/m, log)
  end
end
