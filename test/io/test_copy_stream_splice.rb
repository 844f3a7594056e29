# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'timeout'
require 'tmpdir'
require 'fileutils'
require 'digest'

# IO.copy_stream with splice(2) between pipes and sockets, compared with
# the stock read/write/sendfile/copy_file_range loop: every case runs in
# this process and in a child ruby whose splice path is switched off
# (Bug::IOSplice, the stock path), and the results must be the same.  The
# interruption tests run in this process only.
class TestIOCopyStreamSplice < Test::Unit::TestCase
  # The cases, run as they are both here and in the child.
  CASES_LINE = __LINE__ + 2
  CASES = <<~'RUBY'
    require 'socket'
    require 'tmpdir'
    require 'digest'
    require 'fcntl'
    require 'io/nonblock'
    require 'timeout'

    module CopyStreamCases
      class CopyHung < Exception; end

      SEED = 20250705
      SIZE = 300_007
      KINDS = [:file, :pipe, :unix, :tcp]
      LENGTHS = [nil, 0, 1, 65536 + 1, SIZE + 4096]
      OFFSETS = [nil, 3]
      RESET_SIZE = 20_000
      LARGE = (3 << 20) + 5
      TCP_CLOSE = 7           # tcpi_state of a reset connection
      SIOCOUTQ = 0x5411       # bytes not yet acknowledged by the peer

      EXTRA = {
        append: {
          "pipe to append file" => {src: :pipe, dst: :file, append: true},
          "pipe to append file, 64 KiB + 1" => {src: :pipe, dst: :file, append: true, length: 65537},
          "unix to append file" => {src: :unix, dst: :file, append: true},
          "tcp to append file, 1 byte" => {src: :tcp, dst: :file, append: true, length: 1},
          "file to append file" => {src: :file, dst: :file, append: true},
        },
        buffered: {
          "pipe getc to pipe" => {src: :pipe, dst: :pipe, buffered: :getc},
          "pipe getc to file" => {src: :pipe, dst: :file, buffered: :getc},
          "pipe getc to pipe, 5 bytes" => {src: :pipe, dst: :pipe, buffered: :getc, length: 5},
          "pipe getc to file, 64 KiB + 1" => {src: :pipe, dst: :file, buffered: :getc, length: 65537},
          "unix getc to tcp" => {src: :unix, dst: :tcp, buffered: :getc},
          "tcp getc to file" => {src: :tcp, dst: :file, buffered: :getc},
          "file getc to pipe" => {src: :file, dst: :pipe, buffered: :getc},
          "pipe ungetc to pipe" => {src: :pipe, dst: :pipe, buffered: :ungetc},
          "pipe ungetc to file, 2 bytes" => {src: :pipe, dst: :file, buffered: :ungetc, length: 2},
          "unix ungetc to unix, 64 KiB + 1" => {src: :unix, dst: :unix, buffered: :ungetc, length: 65537},
        },
        no_data_yet: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, writer_delay: 0.1},
          "pipe to file" => {src: :pipe, dst: :file, writer_delay: 0.1},
          "unix to unix" => {src: :unix, dst: :unix, writer_delay: 0.1},
          "tcp to file" => {src: :tcp, dst: :file, writer_delay: 0.1},
          "pipe to tcp, 64 KiB + 1" => {src: :pipe, dst: :tcp, writer_delay: 0.1, length: 65537},
        },
        slow_destination: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, reader_delay: 0.1},
          "unix to pipe" => {src: :unix, dst: :pipe, reader_delay: 0.1},
          "pipe to tcp" => {src: :pipe, dst: :tcp, reader_delay: 0.1},
        },
        epipe: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, epipe: true},
          "pipe to pipe, 1 byte" => {src: :pipe, dst: :pipe, epipe: true, length: 1},
          "unix to pipe" => {src: :unix, dst: :pipe, epipe: true},
          "tcp to pipe" => {src: :tcp, dst: :pipe, epipe: true},
          "pipe to unix" => {src: :pipe, dst: :unix, epipe: true},
          "file to pipe" => {src: :file, dst: :pipe, epipe: true},
          "file to unix" => {src: :file, dst: :unix, epipe: true},
        },
        closed: {
          "closed pipe source to file" => {src: :pipe, dst: :file, closed: :src},
          "closed unix source to pipe" => {src: :unix, dst: :pipe, closed: :src},
          "closed file source to pipe" => {src: :file, dst: :pipe, closed: :src},
          "pipe to closed pipe" => {src: :pipe, dst: :pipe, closed: :dst},
          "unix to closed file" => {src: :unix, dst: :file, closed: :dst},
        },
        reset: {
          "reset before the copy, to pipe" => {src: :tcp, dst: :pipe, reset: :before},
          "reset before the copy, to file" => {src: :tcp, dst: :file, reset: :before},
          "reset during the copy, to pipe" => {src: :tcp, dst: :pipe, reset: :during},
          "reset during the copy, to unix" => {src: :tcp, dst: :unix, reset: :during},
        },
        large: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, size: LARGE},
          "unix to file" => {src: :unix, dst: :file, size: LARGE},
          "tcp to tcp" => {src: :tcp, dst: :tcp, size: LARGE},
          "pipe to file, 1 MiB + 1" => {src: :pipe, dst: :file, size: LARGE, length: (1 << 20) + 1},
          "empty pipe to pipe" => {src: :pipe, dst: :pipe, size: 0},
          "empty unix to file" => {src: :unix, dst: :file, size: 0},
        },
        trickle: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, trickle: true},
          "unix to file" => {src: :unix, dst: :file, trickle: true},
          "tcp to unix, 64 KiB + 1" => {src: :tcp, dst: :unix, trickle: true, length: 65537},
        },
        signal: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, signal: true, writer_delay: 0.1},
          "unix to file" => {src: :unix, dst: :file, signal: true, writer_delay: 0.1},
        },
        destination_state: {
          "pipe to file at position 100" => {src: :pipe, dst: :file, dst_seek: 100},
          "pipe to file at position 100, 10 bytes" => {src: :pipe, dst: :file, dst_seek: 100, length: 10},
          "pipe to file with buffered writes" => {src: :pipe, dst: :file, dst_prewrite: "head"},
          "unix to pipe with buffered writes" => {src: :unix, dst: :pipe, dst_prewrite: "head"},
          "pipe to tcp with buffered writes" => {src: :pipe, dst: :tcp, dst_prewrite: "head"},
        },
        blocking: {
          "pipe to pipe" => {src: :pipe, dst: :pipe, blocking: true, writer_delay: 0.05},
          "unix to unix" => {src: :unix, dst: :unix, blocking: true, writer_delay: 0.05},
          "tcp to file" => {src: :tcp, dst: :file, blocking: true, writer_delay: 0.05},
          "pipe to tcp, slow reader" => {src: :pipe, dst: :tcp, blocking: true, reader_delay: 0.05},
          "unix to pipe, 64 KiB + 1" => {src: :unix, dst: :pipe, blocking: true, length: 65537},
        },
        arguments: {
          "pipe to pipe, length -1" => {src: :pipe, dst: :pipe, length: -1},
          "pipe to pipe, length 2**40" => {src: :pipe, dst: :pipe, length: 2**40},
          "pipe to file, length 2.5" => {src: :pipe, dst: :file, length: 2.5},
          "pipe to pipe, src_offset -1" => {src: :pipe, dst: :pipe, offset: -1},
          "unix to file, src_offset 0" => {src: :unix, dst: :file, offset: 0},
          "file to pipe, src_offset past the end" => {src: :file, dst: :pipe, offset: SIZE + 10},
        },
      }

      # Sockets and descriptors that are not the usual connected stream.
      MISC = {
        "listening tcp socket to pipe" => -> do
          server = TCPServer.new("127.0.0.1", 0)
          r, w = IO.pipe
          copy_result { IO.copy_stream(server, w) }
        ensure
          [server, r, w].each {|io| io&.close}
        end,
        "pipe to unconnected tcp socket" => -> do
          r, w = IO.pipe
          w.write("abc")
          w.close
          sock = Socket.new(:INET, :STREAM)
          copy_result { IO.copy_stream(r, sock) }
        ensure
          [r, w, sock].each {|io| io&.close}
        end,
        "pipe to unconnected udp socket" => -> do
          r, w = IO.pipe
          w.write("abc")
          w.close
          sock = UDPSocket.new
          copy_result { IO.copy_stream(r, sock) }
        ensure
          [r, w, sock].each {|io| io&.close}
        end,
        "pipe to unix socket shut down for writing" => -> do
          r, w = IO.pipe
          w.write("abc")
          w.close
          a, b = UNIXSocket.pair
          a.shutdown(:WR)
          copy_result { IO.copy_stream(r, a) }
        ensure
          [r, w, a, b].each {|io| io&.close}
        end,
        "unix socket shut down for reading to pipe" => -> do
          a, b = UNIXSocket.pair
          b.write("abc")
          a.shutdown(:RD)
          r, w = IO.pipe
          result = copy_result { IO.copy_stream(a, w) }
          w.close
          result.merge(sha: sha(r.read))
        ensure
          [r, w, a, b].each {|io| io&.close}
        end,
        "write-only pipe as the source" => -> do
          r, w = IO.pipe
          r2, w2 = IO.pipe
          copy_result { IO.copy_stream(w, w2) }
        ensure
          [r, w, r2, w2].each {|io| io&.close}
        end,
        "read-only pipe as the destination" => -> do
          r, w = IO.pipe
          w.write("abc")
          r2, w2 = IO.pipe
          copy_result { IO.copy_stream(r, r2) }
        ensure
          [r, w, r2, w2].each {|io| io&.close}
        end,
        "fifo to file" => -> do
          Dir.mktmpdir do |dir|
            File.mkfifo(fifo = File.join(dir, "fifo"))
            writer = Thread.new { File.open(fifo, "wb") {|f| f.write(data)} }
            src = File.open(fifo, "rb")
            dst = File.open(File.join(dir, "dst"), "wb")
            result = copy_result { IO.copy_stream(src, dst) }
            writer.join
            result.merge(dst_pos: dst.pos, sha: sha(File.binread(dst.path)))
          ensure
            [src, dst].each {|io| io&.close}
          end
        end,
      }

      # IO#close of an end of the copy from another thread while the copy
      # waits for the source; then the source gets "hello".  With "reused",
      # a file is opened at once under the closed descriptor's number.
      CLOSING = {
        "source closed" => [:src, false],
        "source closed, its number reused" => [:src, true],
        "destination closed" => [:dst, false],
        "destination closed, its number reused" => [:dst, true],
      }

      # Datagram sockets: a read or a write is a whole datagram.
      DATAGRAM = {
        "pipe to connected udp socket, 64 KiB" => -> do
          receiver = UDPSocket.new
          receiver.bind("127.0.0.1", 0)
          sender = UDPSocket.new
          sender.connect("127.0.0.1", receiver.local_address.ip_port)
          copy_to_datagrams(receiver, sender, 65536)
        ensure
          [receiver, sender].each {|io| io&.close}
        end,
        "pipe to unix datagram socket, 60000 bytes" => -> do
          receiver, sender = Socket.pair(:UNIX, :DGRAM)
          copy_to_datagrams(receiver, sender, 60000)
        ensure
          [receiver, sender].each {|io| io&.close}
        end,
        "unix datagram socket to pipe, 4 datagrams of 20000 bytes, length 60000" => -> do
          src, peer = Socket.pair(:UNIX, :DGRAM)
          4.times {|i| peer.send(data.byteslice(i * 20000, 20000), 0)}
          copy_from_datagrams(src, 60000)
        ensure
          [src, peer].each {|io| io&.close}
        end,
        "unix seqpacket socket to pipe, 3 records of 20000 bytes" => -> do
          src, peer = Socket.pair(:UNIX, :SEQPACKET)
          3.times {|i| peer.send(data.byteslice(i * 20000, 20000), 0)}
          peer.close
          copy_from_datagrams(src, nil)
        ensure
          [src, peer].each {|io| io&.close unless io&.closed?}
        end,
      }

      module_function

      def data(size = SIZE)
        (@data ||= {})[size] ||= Random.new(SEED).bytes(size).freeze
      end

      def sha(bytes)
        Digest::SHA256.hexdigest(bytes)
      end

      def matrix
        KINDS.product(KINDS, LENGTHS, OFFSETS)
      end

      def run_matrix(dir, cases = matrix)
        cases.to_h do |src, dst, length, offset|
          [[src, dst, length, offset], run(dir, src: src, dst: dst, length: length, offset: offset)]
        end
      end

      def run_extra(dir, group)
        EXTRA.fetch(group).to_h {|label, opts| [label, run(dir, **opts)]}
      end

      def run_misc
        MISC.to_h {|label, run| [label, run.call]}
      end

      def run_datagram
        DATAGRAM.to_h {|label, run| [label, run.call]}
      end

      def run_closing
        CLOSING.to_h {|label, (which, reuse)| [label, close_during_copy(which, reuse)]}
      end

      def close_during_copy(which, reuse)
        Dir.mktmpdir("copy_stream_close") do |dir|
          other = nil
          other_path = File.join(dir, "other")
          File.binwrite(other_path, "UNRELATED")
          r, w = IO.pipe
          dst_r, dst_w = IO.pipe
          th = Thread.new do
            {ret: IO.copy_stream(r, dst_w)}
          rescue StandardError => e
            {error: [e.class.name, e.message]}
          end
          wait_until("the copy to wait") { th.status == "sleep" || !th.alive? }
          closing = which == :src ? r : dst_w
          fd = closing.fileno
          File.open(other_path, "r+b") do |f|
            closing.close
            # the lowest free descriptor from fd on: fd itself
            other = IO.for_fd(f.fcntl(Fcntl::F_DUPFD, fd), "r+b") if reuse
          end
          raise "descriptor #{fd} was not reused" if reuse && other.fileno != fd
          begin
            w.write("hello")
          rescue Errno::EPIPE
            # the source's read end is gone
          end
          w.close
          result = th.join(5) ? th.value : (th.kill.join; {hung: true})
          dst_w.close
          result[:dst] = dst_r.read
          other&.close
          result[:other] = File.binread(other_path)
          result
        ensure
          [r, w, dst_r, dst_w, other].each {|io| io&.close}
        end
      end

      # Everything, for the child.
      def run_all
        Dir.mktmpdir("copy_stream_splice") do |dir|
          {
            splice: splice_used_by_copy?,
            matrix: run_matrix(dir),
            extra: EXTRA.keys.to_h {|group| [group, run_extra(dir, group)]},
            misc: run_misc,
            datagram: run_datagram,
            closing: run_closing,
          }
        end
      end

      # IO.copy_stream in a thread that is given 5 seconds.
      def copy_result
        th = Thread.new do
          {ret: yield}
        rescue StandardError => e
          {error: [e.class.name, e.message]}
        end
        th.join(5) ? th.value : (th.kill.join; {hung: true})
      end

      # +size+ bytes, all in a pipe before the copy starts, to +sender+.
      def copy_to_datagrams(receiver, sender, size)
        r, w = IO.pipe
        w.write(data.byteslice(0, size))
        w.close
        result = copy_result { IO.copy_stream(r, sender) }
        datagrams = []
        while String === (datagram = receiver.recv_nonblock(1 << 17, exception: false))
          datagrams << datagram
        end
        result.merge(datagrams: datagrams.map(&:bytesize), sha: sha(datagrams.join))
      ensure
        r&.close
      end

      def copy_from_datagrams(src, length)
        r, w = IO.pipe
        reader = Thread.new { r.read }
        result = copy_result { IO.copy_stream(src, w, length) }
        w.close
        content = reader.value
        result.merge(size: content.bytesize, sha: sha(content))
      ensure
        [r, w].each {|io| io&.close}
      end

      def pipe_fds
        Dir.children("/proc/self/fd").select do |fd|
          File.readlink("/proc/self/fd/#{fd}").start_with?("pipe:") rescue false
        end
      end

      # Whether a pipe to pipe copy makes a pipe of its own (splice(2)'s)
      # while it waits for its source.
      def splice_used_by_copy?
        r, w = IO.pipe
        r2, w2 = IO.pipe
        before = pipe_fds
        th = Thread.new { IO.copy_stream(r, w2) }
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
        until th.status == "sleep" && (pipe_fds - before).size == 2 ||
              Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          sleep 0.01
        end
        sleep 0.1
        used = (pipe_fds - before).size == 2
        w.write("x")
        w.close
        th.join
        used
      ensure
        [r, w, r2, w2].each {|io| io&.close}
      end

      def wait_until(what, timeout = 10)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
        until yield
          if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
            raise "timed out waiting for #{what}"
          end
          sleep 0.005
        end
      end

      # [reading end, writing end]
      def stream_pair(kind)
        case kind
        when :pipe
          IO.pipe
        when :unix
          UNIXSocket.pair
        when :tcp
          server = TCPServer.new("127.0.0.1", 0)
          begin
            client = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
            [server.accept, client]
          ensure
            server.close
          end
        else
          raise ArgumentError, kind.inspect
        end
      end

      def path(dir, name)
        @seq = (@seq || 0) + 1
        File.join(dir, "#{name}#{@seq}")
      end

      def tcp_state(sock)
        sock.getsockopt(Socket::IPPROTO_TCP, Socket::TCP_INFO).data.unpack1("C")
      end

      def unacknowledged(sock)
        buf = [0].pack("i")
        sock.ioctl(SIOCOUTQ, buf)
        buf.unpack1("i")
      end

      def reset(sock)
        sock.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
        sock.close
      end

      # Runs one IO.copy_stream and describes what it did.
      def run(dir, src:, dst:, length: nil, offset: nil, size: SIZE, append: false, buffered: nil,
              writer_delay: nil, reader_delay: nil, trickle: false, signal: false, blocking: false,
              epipe: false, closed: nil, reset: nil, dst_seek: nil, dst_prewrite: nil)
        result = {}
        ios = []
        writer = reader = nil
        bytes = reset ? data.byteslice(0, RESET_SIZE) : data(size)
        if signal
          trapped = 0
          old_trap = trap(:USR2) { trapped += 1 }
        end

        # the source
        if src == :file
          src_path = path(dir, "src")
          File.binwrite(src_path, bytes)
          src_io = File.open(src_path, "rb")
          ios << src_io
        else
          src_io, src_w = stream_pair(src)
          ios << src_io << src_w
          if reset == :before
            src_w.write(bytes)
            wait_until("the data to arrive") do
              src_io.recv_nonblock(RESET_SIZE + 1, Socket::MSG_PEEK, exception: false).bytesize == RESET_SIZE
            end
            reset(src_w)
            wait_until("the reset to arrive") { tcp_state(src_io) == TCP_CLOSE }
          else
            writer = Thread.new do
              sleep writer_delay if writer_delay
              if signal
                Process.kill(:USR2, $$)
                sleep 0.05
              end
              if trickle
                bytes.bytesize.fdiv(10).ceil.then do |n|
                  10.times {|i| src_w.write(bytes.byteslice(i * n, n)); sleep 0.01}
                end
              else
                src_w.write(bytes)
              end
              if reset == :during
                wait_until("the data to be acknowledged") { unacknowledged(src_w) == 0 }
                reset(src_w)
              end
            rescue IOError, SystemCallError
              # the copy is over and the reading end closed: nothing reads the rest
            ensure
              src_w.close unless src_w.closed?
            end
          end
        end

        # the destination
        if dst == :file
          dst_path = path(dir, "dst")
          File.binwrite(dst_path, "prefix") if append
          File.binwrite(dst_path, "-" * 1000) if dst_seek
          dst_io = File.open(dst_path, append ? "ab" : dst_seek ? "r+b" : "wb")
          dst_io.seek(dst_seek) if dst_seek
          ios << dst_io
        else
          dst_r, dst_io = stream_pair(dst)
          ios << dst_r << dst_io
          if epipe
            dst_r.close
          else
            reader = Thread.new do
              sleep reader_delay if reader_delay
              dst_r.read
            end
          end
        end

        if blocking
          src_io.nonblock = false
          dst_io.nonblock = false
        end
        if dst_prewrite
          dst_io.sync = false
          dst_io.write(dst_prewrite)
        end
        case buffered
        when :getc
          result[:getc] = src_io.getc.b
        when :ungetc
          src_io.ungetc("XYZ")
        end
        case closed
        when :src then src_io.close
        when :dst then dst_io.close
        end

        begin
          Timeout.timeout(20, CopyHung) do
            result[:ret] = IO.copy_stream(src_io, dst_io, length, offset)
          end
        rescue CopyHung
          result[:hung] = true
        rescue StandardError => e
          result[:error] = [e.class.name, e.message]
        end

        result[:src_pos] = src_io.pos if src == :file && !src_io.closed?
        result[:dst_pos] = dst_io.pos if dst == :file && !dst_io.closed?

        # Let a writer blocked on a full pipe or socket go.
        src_io.close unless src_io.closed?
        if writer && !writer.join(10)
          result[:writer_hung] = true
          writer.kill.join
        end

        dst_io.close unless dst_io.closed?
        if dst == :file
          content = File.binread(dst_path)
        elsif reader
          if reader.join(10)
            content = reader.value
          else
            result[:reader_hung] = true
            reader.kill.join
            content = ""
          end
        else
          content = ""
        end
        result[:size] = content.bytesize
        result[:sha] = sha(content)
        result[:trapped] = trapped if signal
        result
      ensure
        trap(:USR2, old_trap) if signal
        ios.each {|io| io.close unless io.closed?}
        [writer, reader].each {|th| th.kill.join if th&.alive?}
      end
    end
  RUBY
  class_eval(CASES, __FILE__, CASES_LINE)

  CHILD_SCRIPT = CASES + <<~'RUBY'
    $stdout.binmode
    $stdout.print [Marshal.dump(CopyStreamCases.run_all)].pack("m0")
  RUBY

  class Interrupted < StandardError; end

  class << self
    attr_accessor :stock_run
  end

  def setup
    @dir = Dir.mktmpdir("test_copy_stream_splice")
    @fds = open_fds
  end

  def teardown
    FileUtils.rm_rf(@dir) if @dir
    return unless @fds
    GC.start
    assert_empty(wait_for_fds(@fds), "descriptors leaked")
  end

  def open_fds
    # not the directory's own descriptor, whose number varies
    Dir.open("/proc/self/fd") {|dir| dir.children.map(&:to_i) - [dir.fileno]}.sort
  end

  def describe_fds(fds)
    fds.map {|fd| "#{fd}: #{File.readlink("/proc/self/fd/#{fd}") rescue "?"}"}
  end

  # The descriptors open now and not in +fds+, given a moment to be closed
  # by threads that are ending.
  def wait_for_fds(fds)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    loop do
      extra = open_fds - fds
      return [] if extra.empty?
      return describe_fds(extra) if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.01
    end
  end

  # The results of every case in a child ruby on the stock path.
  def stock
    out, err, status = self.class.stock_run ||= EnvUtil.invoke_ruby(
      ["--disable-gems", "-r-test-/io_splice", "-"],
      "Bug::IOSplice.copy_stream_splice = false\n" + CHILD_SCRIPT, true, true, timeout: 120)
    assert_predicate(status, :success?, "the reference child failed: #{status.inspect}\n#{err}")
    Marshal.load(out.unpack1("m0"))
  end

  def cases
    CopyStreamCases
  end

  def assert_same_as_stock(stock, ours)
    assert_equal(stock.keys.sort_by(&:inspect), ours.keys.sort_by(&:inspect))
    diffs = ours.filter_map do |key, result|
      next if stock[key] == result
      "#{key.inspect}\n  stock path: #{stock[key].inspect}\n  splice:     #{result.inspect}"
    end
    assert(diffs.empty?, "IO.copy_stream differs from the stock path:\n#{diffs.join("\n")}")
  end

  # What the stock IO.copy_stream does with the whole of cases.data.
  def model(src, dst, length, offset)
    if length == 0
      n = 0
    elsif offset && src != :file
      return {error: "Errno::ESPIPE"}
    else
      start = offset || 0
      n = [length || cases::SIZE, cases::SIZE - start].min
      bytes = cases.data.byteslice(start, n)
    end
    expected = {ret: n, sha: cases.sha(bytes || "")}
    expected[:src_pos] = offset ? 0 : n if src == :file
    expected[:dst_pos] = n if dst == :file
    expected
  end

  def assert_model(results)
    wrong = results.filter_map do |(src, dst, length, offset), result|
      expected = model(src, dst, length, offset)
      actual = expected.to_h do |k, _|
        [k, k == :error ? result[:error]&.first : result[k]]
      end
      next if actual == expected && !result[:writer_hung] && !result[:reader_hung]
      "#{[src, dst, length, offset].inspect}: expected #{expected.inspect}, got #{result.inspect}"
    end
    assert(wrong.empty?, wrong.join("\n"))
  end

  def test_reference_child_is_on_the_stock_path
    stock_results = stock
    assert_equal(false, stock_results[:splice], "the reference child spliced")
    assert_equal(cases.matrix.size, stock_results[:matrix].size)
    assert_model(stock_results[:matrix])
  end

  def test_copy_stream_from_a_pipe_uses_splice
    omit "splice(2) is Linux's" unless RUBY_PLATFORM.include?("linux")
    assert_equal(true, cases.splice_used_by_copy?, "a pipe to pipe copy made no pipe of its own")
  end

  cases = CopyStreamCases
  cases::KINDS.each do |src|
    cases::KINDS.each do |dst|
      define_method("test_#{src}_to_#{dst}") do
        ours = cases.run_matrix(@dir, cases.matrix.select {|s, d| s == src && d == dst})
        assert_model(ours)
        assert_same_as_stock(stock[:matrix].select {|(s, d)| s == src && d == dst}, ours)
      end
    end
  end

  def run_extra(group)
    ours = cases.run_extra(@dir, group)
    assert_same_as_stock(stock[:extra][group], ours)
    ours
  end

  def test_append_destination
    ours = run_extra(:append)
    ours.each do |label, result|
      n = label.include?("1 byte") ? 1 : label.include?("64 KiB") ? 65537 : cases::SIZE
      assert_equal(n, result[:ret], label)
      assert_equal(cases.sha("prefix" + cases.data.byteslice(0, n)), result[:sha], label)
      assert_equal(n + 6, result[:dst_pos], label)
    end
  end

  def test_buffered_source
    ours = run_extra(:buffered)
    result = ours["pipe getc to pipe"]
    assert_equal(cases.data.byteslice(0, result[:getc].bytesize), result[:getc])
    assert_equal(cases::SIZE - result[:getc].bytesize, result[:ret])
    assert_equal(cases.sha(cases.data.byteslice(result[:getc].bytesize..)), result[:sha])
    result = ours["pipe getc to pipe, 5 bytes"]
    assert_equal(5, result[:ret])
    assert_equal(cases.sha(cases.data.byteslice(result[:getc].bytesize, 5)), result[:sha])
    result = ours["pipe getc to file, 64 KiB + 1"]
    assert_equal(65537, result[:ret])
    assert_equal(cases.sha(cases.data.byteslice(result[:getc].bytesize, 65537)), result[:sha])
    assert_equal(65537, result[:dst_pos])
    result = ours["pipe ungetc to pipe"]
    assert_equal(cases::SIZE + 3, result[:ret])
    assert_equal(cases.sha("XYZ" + cases.data), result[:sha])
    result = ours["pipe ungetc to file, 2 bytes"]
    assert_equal(2, result[:ret])
    assert_equal(cases.sha("XY"), result[:sha])
    result = ours["unix ungetc to unix, 64 KiB + 1"]
    assert_equal(65537, result[:ret])
    assert_equal(cases.sha("XYZ" + cases.data.byteslice(0, 65534)), result[:sha])
  end

  def test_source_without_data_yet
    ours = run_extra(:no_data_yet)
    ours.each do |label, result|
      n = label.include?("64 KiB") ? 65537 : cases::SIZE
      assert_equal(n, result[:ret], label)
      assert_equal(cases.sha(cases.data.byteslice(0, n)), result[:sha], label)
    end
  end

  def test_slow_destination
    ours = run_extra(:slow_destination)
    ours.each do |label, result|
      assert_equal(cases::SIZE, result[:ret], label)
      assert_equal(cases.sha(cases.data), result[:sha], label)
    end
  end

  def test_epipe
    ours = run_extra(:epipe)
    ours.each do |label, result|
      assert_equal("Errno::EPIPE", result[:error]&.first, label)
    end
  end

  def test_closed_io
    ours = run_extra(:closed)
    ours.each do |label, result|
      assert_equal(["IOError", "closed stream"], result[:error], label)
      assert_equal(0, result[:size], label)
    end
  end

  def test_source_reset_by_peer
    ours = run_extra(:reset)
    ours.each do |label, result|
      assert_equal("Errno::ECONNRESET", result[:error]&.first, label)
      assert_equal(cases.sha(cases.data.byteslice(0, cases::RESET_SIZE)), result[:sha], label)
    end
  end

  def test_large_and_empty_sources
    ours = run_extra(:large)
    ours.each do |label, result|
      size = label.include?("empty") ? 0 : cases::LARGE
      n = label.include?("1 MiB + 1") ? (1 << 20) + 1 : size
      assert_equal(n, result[:ret], label)
      assert_equal(cases.sha(cases.data(size).byteslice(0, n)), result[:sha], label)
    end
  end

  def test_source_written_in_pieces
    ours = run_extra(:trickle)
    ours.each do |label, result|
      n = label.include?("64 KiB") ? 65537 : cases::SIZE
      assert_equal(n, result[:ret], label)
      assert_equal(cases.sha(cases.data.byteslice(0, n)), result[:sha], label)
    end
  end

  def test_signal_during_the_copy
    ours = run_extra(:signal)
    ours.each do |label, result|
      assert_equal(1, result[:trapped], label)
      assert_equal(cases::SIZE, result[:ret], label)
      assert_equal(cases.sha(cases.data), result[:sha], label)
    end
  end

  def test_destination_state
    ours = run_extra(:destination_state)
    result = ours["pipe to file at position 100"]
    assert_equal(100 + cases::SIZE, result[:dst_pos])
    assert_equal(cases.sha("-" * 100 + cases.data), result[:sha])
    result = ours["pipe to file at position 100, 10 bytes"]
    assert_equal(110, result[:dst_pos])
    assert_equal(cases.sha("-" * 100 + cases.data.byteslice(0, 10) + "-" * 890), result[:sha])
    ours.each_key.grep(/buffered/) do |label|
      assert_equal(cases::SIZE, ours[label][:ret], label)
      assert_equal(cases.sha("head" + cases.data), ours[label][:sha], label)
    end
  end

  def test_odd_arguments
    ours = run_extra(:arguments)
    assert_equal(cases::SIZE, ours["pipe to pipe, length -1"][:ret])
    assert_equal(cases::SIZE, ours["pipe to pipe, length 2**40"][:ret])
    assert_equal(2, ours["pipe to file, length 2.5"][:ret])
    assert_equal(cases::SIZE, ours["pipe to pipe, src_offset -1"][:ret])
    assert_equal("Errno::ESPIPE", ours["unix to file, src_offset 0"][:error]&.first)
    assert_equal(0, ours["file to pipe, src_offset past the end"][:ret])
  end

  def test_other_descriptors
    ours = cases.run_misc
    assert_same_as_stock(stock[:misc], ours)
    assert_equal(cases.sha(cases.data), ours["fifo to file"][:sha])
    assert_equal(cases::SIZE, ours["fifo to file"][:ret])
    assert_equal("IOError", ours["write-only pipe as the source"][:error]&.first)
    assert_equal("IOError", ours["read-only pipe as the destination"][:error]&.first)
  end

  def test_blocking_descriptors
    ours = run_extra(:blocking)
    ours.each do |label, result|
      n = label.include?("64 KiB") ? 65537 : cases::SIZE
      assert_equal(n, result[:ret], label)
      assert_equal(cases.sha(cases.data.byteslice(0, n)), result[:sha], label)
    end
  end

  # The stock loop reads the descriptor from the IO on every call, and
  # fails with EBADF once another thread has closed it.
  # Here the splice path differs from stock on purpose.  Stock's loop
  # blocks in poll(2) unregistered: IO#close releases the descriptor at
  # once and the loop fails with EBADF on its next read or write (or, had
  # the number been reused before it looked, would use the new file).  The
  # splice path registers as a user of both descriptors, like a blocking
  # read: the close interrupts it with IOError and releases the descriptor
  # only once no splice can reach it.
  def test_closed_by_another_thread_during_the_copy
    omit "splice(2) is Linux's" unless RUBY_PLATFORM.include?("linux")
    ours = cases.run_closing
    ours.each do |label, result|
      assert_nil(result[:hung], "#{label}: the copy hung")
      assert_equal(["IOError", "stream closed in another thread"], result[:error], label)
      assert_equal("UNRELATED", result[:other], "#{label}: a file opened after the close was written to")
      assert_not_include(result[:dst], "UNRELATED", "#{label}: a file opened after the close was read")
    end
  end

  # IO.copy_stream(s, s), an echo, is one user of one descriptor: a close
  # from another thread raises one IOError in it.  Registered as a user of
  # the source and of the destination, it got two, and the second fired
  # after the copy's caller had rescued the first.
  def test_echo_closed_by_another_thread
    omit "splice(2) is Linux's" unless RUBY_PLATFORM.include?("linux")
    a, b = UNIXSocket.pair
    th = Thread.new do
      IO.copy_stream(a, a)
      :returned
    rescue IOError => first
      begin
        sleep 0.2 # where a second IOError would fire
        [:rescued, first.message]
      rescue Exception => second
        [:second_exception, first.message, second.class, second.message]
      end
    end
    b.write("hello")
    assert_equal("hello", b.readpartial(10))
    cases.wait_until("the copy to wait") { th.status == "sleep" || !th.alive? }
    a.close
    assert_same(th, th.join(10), "the copy's thread did not end")
    assert_equal([:rescued, "stream closed in another thread"], th.value)
  ensure
    th&.kill&.join
    [a, b].each {|io| io&.close}
  end

  # M:N threads take turns on a few native threads; a copy waits in poll(2)
  # without the GVL, and every other Ruby thread goes on meanwhile.
  def test_concurrent_copies_in_mn_threads
    assert_separately([{"RUBY_MN_THREADS" => "1"}], <<~'RUBY', timeout: 30)
      def other_fds
        Dir.children("/proc/self/fd").map(&:to_i).sort.select do |fd|
          File.readlink("/proc/self/fd/#{fd}") rescue false
        end
      end
      fds = other_fds
      random = Random.new(6)
      sizes = Array.new(8) { Array.new(4) { random.rand(1..300_000) } }
      bad = []
      threads = sizes.each_with_index.map do |list, i|
        Thread.new do
          list.each_with_index do |size, j|
            sr, sw = IO.pipe
            dr, dw = IO.pipe
            data = random.bytes(size)
            writer = Thread.new { sw.write(data); sw.close }
            reader = Thread.new { dr.binmode.read }
            begin
              n = IO.copy_stream(sr, dw)
              bad << [i, j, :returned, n, size] unless n == size
            rescue => e
              bad << [i, j, e.class, e.message]
            end
            dw.close
            got = reader.value
            writer.join
            [sr, dr].each(&:close)
            bad << [i, j, :mismatch, got.bytesize, size] unless got == data
          end
        end
      end
      threads.each(&:join)
      assert_equal([], bad)
      assert_equal(fds, other_fds, "descriptors leaked")
    RUBY
  end

  # A trap handler runs in the copy when its poll(2) is interrupted, and
  # can fork: the child goes on with the copy and a copy of its pipe, the
  # parent with its own.
  def test_fork_in_a_trap_during_the_copy
    omit "no fork" unless Process.respond_to?(:fork)
    assert_separately([], <<~'RUBY', timeout: 30)
      parent = Process.pid
      r, w = IO.pipe
      r2, w2 = IO.pipe
      child = child_status = nil
      trap(:USR1) do
        if (child = fork)
          Process.wait(child)
          child_status = $?
        end
        # the child returns to the copy the trap interrupted
      end
      writer = Thread.new do
        sleep 0.1 until Thread.main.status == "sleep"
        Process.kill(:USR1, parent)
        sleep 0.01 until child
        w.write("abcde")   # the child's copy takes these
        sleep 0.01 until child_status
        w.write("fghij")   # and the parent's these
      end
      n = IO.copy_stream(r, w2, 5)
      exit!(n == 5 ? 0 : 1) if Process.pid != parent
      writer.join
      w2.close
      assert_equal(0, child_status.exitstatus)
      assert_equal([5, "abcdefghij"], [n, r2.read])
      [r, w, r2].each(&:close)
    RUBY
  end

  # A write to a datagram socket sends one datagram, a read receives one:
  # the stock loop reads and writes at most 16 KiB at a time.
  def test_datagram_sockets
    ours = cases.run_datagram
    assert_same_as_stock(stock[:datagram], ours)
  end

  # IO.copy_stream to a pipe from a pipe or socket nobody writes to, in a
  # thread: returns the thread once it waits (or has ended), both ends of
  # the source and of the destination, and the descriptors open before.
  def blocked_copy(kind = :pipe, blocking: false, &block)
    r, w = cases.stream_pair(kind)
    r.nonblock = false if blocking
    dst_r, dst_w = IO.pipe
    fds = open_fds
    th = Thread.new do
      block ? block.call { IO.copy_stream(r, dst_w) } : IO.copy_stream(r, dst_w)
      :finished
    rescue Exception => e
      e
    end
    cases.wait_until("the copy to wait") { th.status == "sleep" || !th.alive? }
    [th, r, w, dst_r, dst_w, fds]
  end

  # After an interrupted copy: the thread is gone with its descriptors, and
  # nothing of the source was taken.
  def assert_copy_ended(th, r, w, dst_r, dst_w, fds)
    assert_same(th, th.join(10), "the copy's thread did not end")
    assert_not_predicate(th, :alive?)
    GC.start
    assert_empty(wait_for_fds(fds), "descriptors leaked")

    w.write("after")
    assert_not_nil(r.wait_readable(5), "the source pipe is not readable after the interruption")
    assert_equal("after", r.read_nonblock(100))
    assert_equal(:wait_readable, dst_r.read_nonblock(100, exception: false), "the destination got bytes")

    # Both ends still copy.
    w.write("again")
    assert_equal(5, Timeout.timeout(10) { IO.copy_stream(r, dst_w, 5) })
    assert_equal("again", dst_r.read_nonblock(100))
  ensure
    [r, w, dst_r, dst_w].each(&:close)
  end

  def test_interrupt_by_thread_raise
    th, *rest = blocked_copy
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.raise(Interrupted, "stop the copy")
    assert_copy_ended(th, *rest)
    assert_instance_of(Interrupted, th.value)
    assert_equal("stop the copy", th.value.message)
  end

  def test_interrupt_by_thread_kill
    th, *rest = blocked_copy
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.kill
    assert_copy_ended(th, *rest)
    assert_equal(false, th.status)
    assert_nil(th.value)
  end

  def test_interrupt_by_timeout
    th, *rest = blocked_copy {|&copy| Timeout.timeout(0.2, &copy)}
    assert_copy_ended(th, *rest)
    assert_kind_of(Timeout::Error, th.value)
  end

  def test_interrupt_unix_source_by_thread_raise
    th, *rest = blocked_copy(:unix)
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.raise(Interrupted, "stop the copy")
    assert_copy_ended(th, *rest)
    assert_instance_of(Interrupted, th.value)
  end

  def test_interrupt_blocking_unix_source_by_thread_raise
    th, *rest = blocked_copy(:unix, blocking: true)
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.raise(Interrupted, "stop the copy")
    assert_copy_ended(th, *rest)
    assert_instance_of(Interrupted, th.value)
  end

  def test_interrupt_tcp_source_by_thread_kill
    th, *rest = blocked_copy(:tcp)
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.kill
    assert_copy_ended(th, *rest)
    assert_equal(false, th.status)
  end

  def test_interrupt_blocking_tcp_source_by_timeout
    th, *rest = blocked_copy(:tcp, blocking: true) {|&copy| Timeout.timeout(0.2, &copy)}
    assert_copy_ended(th, *rest)
    assert_kind_of(Timeout::Error, th.value)
  end

  def test_interrupt_blocking_pipe_source_by_thread_raise
    th, *rest = blocked_copy(:pipe, blocking: true)
    assert_predicate(th, :alive?, "IO.copy_stream did not wait")
    th.raise(Interrupted, "stop the copy")
    assert_copy_ended(th, *rest)
    assert_instance_of(Interrupted, th.value)
  end

  # Each copy has its own pipe and waits without the GVL.
  def test_concurrent_copies
    kinds = [[:pipe, :pipe], [:unix, :tcp], [:tcp, :pipe], [:pipe, :unix], [:unix, :unix]]
    threads = kinds.map do |src, dst|
      Thread.new { cases.run(@dir, src: src, dst: dst) }
    end
    threads.zip(kinds) do |th, (src, dst)|
      assert_same(th, th.join(30), "the #{src} to #{dst} copy did not end")
      assert_equal(model(src, dst, nil, nil), th.value.slice(:ret, :sha), "#{src} to #{dst}")
    end
  ensure
    threads&.each {|th| th.kill.join}
  end

  def test_copy_in_a_forked_child
    omit "no fork" unless Process.respond_to?(:fork)
    r, w = IO.pipe
    pid = fork do
      r.close
      report = begin
        cases.run(@dir, src: :pipe, dst: :file)
      rescue Exception => e
        e.full_message
      end
      w.write(Marshal.dump(report))
      w.close
      exit!(0)
    end
    w.close
    report = Marshal.load(r.read)
    Process.wait(pid)
    assert_kind_of(Hash, report, report)
    assert_equal(model(:pipe, :file, nil, nil), report.slice(:ret, :sha, :dst_pos))
  ensure
    r&.close
    w&.close
  end

  def test_interrupt_copy_in_progress
    bytes = Random.new(7).bytes(1 << 20)
    r, w = IO.pipe
    dst_path = File.join(@dir, "in_progress")
    dst = File.open(dst_path, "wb")
    fds = open_fds
    writer = Thread.new { w.write(bytes) } # and the pipe stays open
    th = Thread.new do
      IO.copy_stream(r, dst)
      :finished
    rescue Exception => e
      e
    end
    cases.wait_until("the first MiB to arrive") { File.size(dst_path) == bytes.bytesize || !th.alive? }
    assert_same(writer, writer.join(10), "the copy did not take all the writer wrote")
    cases.wait_until("the copy to wait") { th.status == "sleep" || !th.alive? }
    flunk("IO.copy_stream ended on its own: #{th.value.inspect}") unless th.alive?

    th.raise(Interrupted, "stop the copy")
    assert_same(th, th.join(10), "the copy's thread did not end")
    assert_instance_of(Interrupted, th.value)
    GC.start
    assert_empty(wait_for_fds(fds), "descriptors leaked")

    assert_equal(bytes.bytesize, dst.pos)
    assert_equal(cases.sha(bytes), cases.sha(File.binread(dst_path)))
    w.write("more")
    assert_not_nil(r.wait_readable(5), "the source pipe is not readable after the interruption")
    assert_equal("more", r.read_nonblock(100))
    dst.write("tail")
    dst.flush
    assert_equal(bytes.bytesize + 4, File.size(dst_path))
  ensure
    writer&.kill&.join
    th&.kill&.join
    [r, w, dst].each {|io| io&.close}
  end

  # Interrupted with bytes read from the source that the destination does
  # not take: they are lost, as in the stock loop, but nothing else is.
  def test_interrupt_while_the_destination_is_full
    r, w = IO.pipe
    dst_r, dst_w = IO.pipe
    fds = open_fds
    writer = Thread.new do
      w.write(cases.data)
    rescue IOError, SystemCallError
    end
    th = Thread.new do
      IO.copy_stream(r, dst_w)
      :finished
    rescue Exception => e
      e
    end
    cases.wait_until("the copy to wait") { th.status == "sleep" || !th.alive? }
    flunk("IO.copy_stream ended on its own: #{th.value.inspect}") unless th.alive?
    th.raise(Interrupted, "stop the copy")
    assert_same(th, th.join(10), "the copy's thread did not end")
    assert_instance_of(Interrupted, th.value)
    GC.start
    assert_empty(wait_for_fds(fds), "descriptors leaked")
    r.close
    assert_same(writer, writer.join(10), "the writer did not end")
    dst_w.close
    copied = dst_r.read.b
    assert_operator(copied.bytesize, :>, 0)
    assert_equal(cases.sha(cases.data.byteslice(0, copied.bytesize)), cases.sha(copied),
                 "the destination got other bytes than the first #{copied.bytesize} of the source")
  ensure
    writer&.kill&.join
    th&.kill&.join
    [r, w, dst_r, dst_w].each {|io| io&.close}
  end

  # splice(2) from a TCP socket stops at urgent data (MSG_OOB) and does not
  # step over it, where read(2) does: the copy neither ends nor spins
  # there, with the sender gone or still connected.
  def test_tcp_urgent_data
    [false, true].each do |sender_stays|
      TCPServer.open("127.0.0.1", 0) do |server|
        sender = TCPSocket.new("127.0.0.1", server.addr[1])
        src = server.accept
        r, w = IO.pipe
        [r, w].each(&:binmode)
        sender.write("abc")
        sender.send("X", Socket::MSG_OOB)
        sender.write("def")
        sleep 0.05 # the three sends have arrived
        closer = Thread.new { sleep 0.2 if sender_stays; sender.close }
        copied = Timeout.timeout(10) { IO.copy_stream(src, w) }
        w.close
        assert_equal([6, "abcdef"], [copied, r.read], sender_stays ? "sender connected" : "sender gone")
      ensure
        closer&.join
        [src, sender, r, w].each { |io| io&.close }
      end
    end
  end
end
