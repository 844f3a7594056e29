# frozen_string_literal: false
require 'test/unit'
require 'socket'
require 'timeout'
require 'tmpdir'
require 'fileutils'
require 'digest'
require 'fcntl'
require_relative 'uring_test_helper'

# IO.copy_stream through IO::Uring::Scheduler#io_splice: the bytes, the
# results and the file positions, the same as without a scheduler; and
# IO#close, timeouts, Fiber#raise, Thread#raise and Thread#kill while a
# copy waits in the kernel.
class TestIOUringIOSplice < Test::Unit::TestCase
  include IOUringTestHelper

  # Records every #io_splice call:
  # [from, from_offset, to, to_offset, length, result], the result being
  # :pending while the call runs, or the class of what it raised.
  module CountSplices
    def splices
      @splices ||= []
    end

    # Calls in progress.
    def splicing
      @splicing ||= 0
    end

    def io_splice(from, from_offset, to, to_offset, length)
      call = [from, from_offset, to, to_offset, length, :pending]
      splices << call
      @splicing = splicing + 1
      begin
        call[5] = super
      rescue Exception => e
        call[5] = e.class
        raise
      ensure
        @splicing -= 1
      end
    end
  end

  class Interrupted < StandardError; end
  class CopyHung < Exception; end

  HOOK_CHUNK = 4 << 20          # the most io_splice is asked for at once
  KINDS = [:file, :pipe, :unix, :tcp]
  SIZE = 200_003
  LENGTHS = [nil, 0, 1, 65537, SIZE + 4096]
  OFFSETS = [nil, 3]
  BIG = Random.new(20250706).bytes((3 << 20) + 1234).freeze
  DATA = BIG.byteslice(0, SIZE).freeze

  def setup
    super
    @dir = Dir.mktmpdir("test_io_uring_io_splice")
  end

  def teardown
    FileUtils.rm_rf(@dir) if @dir
    # Descriptors of threads that are ending get a moment to be closed.
    wait_for_fds(@fds) if @fds
    super
  end

  def wait_for_fds(fds)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    until (open_fds - fds).empty?
      break if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      GC.start
      sleep 0.01
    end
  end

  # Runs the block in a new thread, with a new IO::Uring::Scheduler (that
  # counts its #io_splice calls) set there; returns the scheduler, closed.
  def run_scheduler(timeout = 30)
    scheduler = nil
    thread = Thread.new do
      scheduler = IO::Uring::Scheduler.new.extend(CountSplices)
      Fiber.set_scheduler(scheduler)
      yield scheduler
    end
    thread.join(timeout) or flunk("the scheduler thread hung")
    assert_predicate(scheduler, :closed?)
    scheduler
  ensure
    thread&.kill&.join(5)
  end

  # Runs the block in one non-blocking fiber of a new scheduler; returns
  # its value, or raises here what it raised there.
  def in_fiber(timeout = 30)
    value = error = nil
    run_scheduler(timeout) do
      Fiber.schedule do
        value = yield
      rescue Exception => e
        error = e
      end
    end
    raise error if error
    value
  end

  def sha(bytes)
    Digest::SHA256.hexdigest(bytes)
  end

  def binary_pipe
    IO.pipe.each(&:binmode)
  end

  # What +io+ holds now: its bytes, :wait_readable or nil (end of file).
  # With read(2) even in a non-blocking fiber: IO::Uring::Scheduler#io_read
  # waits for bytes where read_nonblock asks for none.
  def available(io)
    Fiber.blocking { io.read_nonblock(100, exception: false) }
  end

  def wait_until(what, timeout = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until yield
      flunk("timed out waiting for #{what}") if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.005
    end
  end

  # [reading end, writing end]
  def stream_pair(kind)
    Fiber.blocking do
      case kind
      when :pipe
        binary_pipe
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
  end

  def new_path(name)
    @seq = (@seq || 0) + 1
    File.join(@dir, "#{name}#{@seq}")
  end

  # One IO.copy_stream(src, dst, length, offset) of +data+, in this
  # thread (under its scheduler, if it has one), described: its result or
  # error, the bytes the destination got, the file positions, and the
  # #io_splice calls it made (with a scheduler).
  #
  # src_seek: the source file's position before the copy.
  # dst_prefix: bytes written (buffered) to the destination file first.
  # append: the destination file, holding "prefix", opened with O_APPEND.
  # epipe: the destination's reader is closed before the copy.
  def run_case(src:, dst:, data: DATA, length: nil, offset: nil, src_seek: nil,
               dst_prefix: nil, append: false, epipe: false)
    result = {}
    ios = []
    writer = reader = nil
    scheduler = Fiber.scheduler
    before = scheduler&.splices&.size

    if src == :file
      src_path = new_path("src")
      File.binwrite(src_path, data)
      src_io = File.open(src_path, "rb")
      ios << src_io
      src_io.seek(src_seek) if src_seek
    else
      src_io, src_w = stream_pair(src)
      ios << src_io << src_w
      writer = Thread.new do
        src_w.write(data)
      rescue IOError, SystemCallError
        # the copy is over and the reading end closed
      ensure
        src_w.close
      end
    end

    if dst == :file
      dst_path = new_path("dst")
      File.binwrite(dst_path, "prefix") if append
      dst_io = File.open(dst_path, append ? "ab" : "wb")
      ios << dst_io
      dst_io.write(dst_prefix) if dst_prefix
    else
      dst_r, dst_io = stream_pair(dst)
      ios << dst_r << dst_io
      if epipe
        dst_r.close
      else
        reader = Thread.new { dst_r.read.b }
      end
    end

    begin
      Timeout.timeout(10, CopyHung) do
        result[:ret] = IO.copy_stream(src_io, dst_io, length, offset)
      end
    rescue CopyHung
      result[:hung] = true
    rescue StandardError => e
      result[:error] = [e.class.name, e.message]
    end
    result[:src_pos] = src_io.pos if src == :file
    result[:dst_pos] = dst_io.pos if dst == :file
    if scheduler
      result[:splices] = scheduler.splices[before..].map do |from, from_offset, to, to_offset, len, ret|
        {from: from.equal?(src_io), from_offset: from_offset, to: to.equal?(dst_io),
         to_offset: to_offset, length: len, result: ret}
      end
    end

    src_io.close # lets a writer blocked on a full pipe or socket go
    if writer && !writer.join(10)
      result[:writer_hung] = true
    end
    dst_io.close
    if dst == :file
      content = File.binread(dst_path)
    elsif reader
      if reader.join(10)
        content = reader.value
      else
        result[:reader_hung] = true
        content = ""
      end
    else
      content = ""
    end
    result[:size] = content.bytesize
    result[:sha] = sha(content)
    result
  ensure
    ios.each { |io| io.close unless io.closed? }
    [writer, reader].each { |th| th.kill.join if th&.alive? }
  end

  # What IO.copy_stream makes of +data+, from the read(2)/write(2) model.
  def model(src, dst, length, offset, data: DATA, src_seek: nil, dst_prefix: "")
    return {error: "Errno::ESPIPE"} if offset && src != :file && length != 0
    start = offset || src_seek || 0
    n = length == 0 ? 0 : [length || data.bytesize, data.bytesize - start].min
    expected = {ret: n, sha: sha(dst_prefix + data.byteslice(start, n))}
    expected[:src_pos] = offset ? (src_seek || 0) : start + n if src == :file
    expected[:dst_pos] = dst_prefix.bytesize + n if dst == :file
    expected
  end

  def assert_model(expected, result, label)
    if expected[:error]
      assert_equal(expected[:error], result[:error]&.first, label)
      return
    end
    assert_nil(result[:error], label)
    assert_equal(expected, result.slice(*expected.keys), label)
  end

  # The calls a whole copy made: each asked for what was left (up to
  # HOOK_CHUNK), from where the last one stopped, got at least one byte
  # but the last, which may find end of file; together, all that was
  # copied.  Without a length, a file is copied up to the +file_left+
  # bytes it had past its start, as sendfile(2) would.
  def assert_splices(calls, ret, length, offset, label, file_left: nil)
    assert_not_empty(calls, "#{label}: io_splice was not called")
    length ||= file_left
    done = 0
    calls.each_with_index do |call, i|
      assert_equal(true, call[:from], "#{label}: call #{i}: from")
      assert_equal(true, call[:to], "#{label}: call #{i}: to")
      assert_nil(call[:to_offset], "#{label}: call #{i}: to_offset")
      assert_equal(offset && offset + done, call[:from_offset], "#{label}: call #{i}: from_offset")
      assert_equal([length ? length - done : HOOK_CHUNK, HOOK_CHUNK].min, call[:length], "#{label}: call #{i}: length")
      assert_kind_of(Integer, call[:result], "#{label}: call #{i}: result")
      if i == calls.size - 1 && call[:result] == 0
        assert(length.nil? || done < length, "#{label}: io_splice called for nothing")
      else
        assert_operator(call[:result], :>, 0, "#{label}: call #{i}: result")
      end
      done += call[:result]
    end
    assert_equal(ret, done, "#{label}: the bytes io_splice returned")
  end

  # 1. ---------------------------------------------------------------

  def test_copies_go_through_io_splice
    big = BIG.bytesize
    cases = {
      "pipe to pipe" => {src: :pipe, dst: :pipe},
      "unix to unix" => {src: :unix, dst: :unix},
      "tcp to tcp" => {src: :tcp, dst: :tcp},
      "file to unix, from position 11" => {src: :file, dst: :unix, src_seek: 11},
      "file to tcp, 2 MB from offset 5" => {src: :file, dst: :tcp, src_seek: 7, length: 2_000_003, offset: 5},
      "unix to file after buffered bytes" => {src: :unix, dst: :file, dst_prefix: "head"},
      "tcp to file, all but 10 bytes" => {src: :tcp, dst: :file, length: big - 10},
      "file to file, 5 MB from the middle" => {src: :file, dst: :file, src_seek: 1000, length: 5 << 20},
    }
    results = in_fiber do
      cases.transform_values { |opts| run_case(data: BIG, **opts) }
    end
    cases.each do |label, opts|
      result = results[label]
      assert_nil(result[:hung], "#{label}: the copy hung")
      assert_model(model(opts[:src], opts[:dst], opts[:length], opts[:offset], data: BIG,
                         src_seek: opts[:src_seek], dst_prefix: opts[:dst_prefix] || ""),
                   result, label)
      assert_splices(result[:splices], result[:ret], opts[:length], opts[:offset], label,
                     file_left: opts[:src] == :file ? BIG.bytesize - (opts[:offset] || opts[:src_seek] || 0) : nil)
    end
  end

  # 2. ---------------------------------------------------------------

  def matrix
    KINDS.product(KINDS, LENGTHS, OFFSETS)
  end

  def run_matrix
    matrix.to_h do |src, dst, length, offset|
      [[src, dst, length, offset], run_case(src: src, dst: dst, length: length, offset: offset)]
    end
  end

  def test_same_as_without_a_scheduler
    ours = in_fiber(120) { run_matrix }
    plain = Thread.new { run_matrix }.value
    diffs = []
    ours.each do |key, result|
      src, dst, length, offset = key
      label = key.inspect
      splices = result.delete(:splices)
      assert_nil(result[:hung], "#{label}: the copy hung")
      assert_model(model(src, dst, length, offset), result, label)
      if length == 0 || (offset && src != :file)
        assert_empty(splices, "#{label}: io_splice called")
      else
        assert_splices(splices, result[:ret], length, offset, label,
                       file_left: src == :file ? SIZE - (offset || 0) : nil)
      end
      diffs << "#{label}\n  without a scheduler: #{plain[key].inspect}\n  io_splice:           #{result.inspect}" if plain[key] != result
    end
    assert(diffs.empty?, "IO.copy_stream differs under IO::Uring::Scheduler:\n#{diffs.join("\n")}")
  end

  # A blocking TCP socket (IO#nonblock = false) would make splice(2) wait
  # in the kernel with the whole thread (SPLICE_F_NONBLOCK covers only the
  # pipe there): its copies stay on the ring, and the
  # other fibers run while the copy waits.
  def test_blocking_socket_source_leaves_the_thread_free
    # IO::Buffer's experimental warning (printed on master) is not the test.
    assert_separately(%w[-W:no-experimental -rio/uring -rsocket -rio/nonblock], <<~'RUBY', timeout: 30)
      server = TCPServer.new("127.0.0.1", 0)
      b = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      a = server.accept
      server.close
      a.nonblock = false
      r, w = IO.pipe
      ticks = 0
      copied = nil
      Thread.new do
        Fiber.set_scheduler(IO::Uring::Scheduler.new)
        Fiber.schedule { copied = IO.copy_stream(a, w) }
        Fiber.schedule do
          5.times { sleep 0.01; ticks += 1 }
          b.write("data")
          b.close
        end
      end.join
      w.close
      assert_equal(5, ticks)
      assert_equal(4, copied)
      assert_equal("data", r.read)
    RUBY
  end

  # A source offset or position past the end of a regular file: stock
  # IO.copy_stream hands copy_file_range(2) the negative rest as a size_t
  # (EOVERFLOW) when the destination is a file too, and copies nothing to
  # anything else.
  def test_source_past_the_end_of_the_file
    path = new_path("src")
    File.binwrite(path, "abc")
    cases = {
      "file to file, offset" => [:file, nil, 10, nil],
      "file to file, position" => [:file, nil, nil, 10],
      "file to file, length and offset" => [:file, 5, 10, nil],
      "file to file, offset at the end" => [:file, nil, 3, nil],
      "file to pipe, offset" => [:pipe, nil, 10, nil],
      "file to pipe, position" => [:pipe, nil, nil, 10],
      "file to unix, offset" => [:unix, nil, 10, nil],
    }
    run = proc do
      cases.transform_values do |dst, length, offset, seek|
        File.open(path, "rb") do |src|
          src.seek(seek) if seek
          if dst == :file
            out = File.open(new_path("dst"), "wb")
          else
            peer, out = stream_pair(dst)
          end
          begin
            [IO.copy_stream(src, out, length, offset), src.pos]
          rescue SystemCallError => e
            [e.class, e.message]
          ensure
            [peer, out].each { |io| io&.close }
          end
        end
      end
    end
    ours = in_fiber { run.call }
    plain = Thread.new { run.call }.value
    assert_equal([Errno::EOVERFLOW, "Value too large for defined data type - copy_file_range"],
                 plain["file to file, offset"], "the stock path")
    assert_equal(plain, ours)
  end

  # 3. ---------------------------------------------------------------

  def test_append_destination
    cases = {
      "pipe to append file" => {src: :pipe},
      "unix to append file, 64 KiB + 1" => {src: :unix, length: 65537},
      "file to append file" => {src: :file},
      "file to append file, from offset 3" => {src: :file, offset: 3},
    }
    ours = in_fiber { cases.transform_values { |opts| run_case(dst: :file, append: true, **opts) } }
    plain = Thread.new { cases.transform_values { |opts| run_case(dst: :file, append: true, **opts) } }.value
    cases.each do |label, opts|
      result = ours[label]
      assert_equal([nil], result.delete(:splices).map { |call| call[:result] }, "#{label}: io_splice results")
      assert_model(model(opts[:src], :file, opts[:length], opts[:offset], dst_prefix: "prefix"), result, label)
      assert_equal(plain[label], result, label)
    end
  end

  # Keeps the scheduler's thread in this (non-blocking) fiber until the
  # workers that appeared since `threads_before` all sleep (the copy's is
  # in its wait then), or 2 seconds.
  def busy_until_workers_wait(threads_before)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
    until Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      workers = Thread.list - threads_before - [Thread.current]
      break if workers.any? && workers.all? { |t| t.status == "sleep" }
    end
  end

  # The append copy falls back to copy_stream's own loop, which
  # #blocking_operation_wait runs on a worker.  The source pipe is empty and
  # the scheduler's thread is busy in another fiber when the worker finds
  # it so: the worker waits itself (patch 0016; it called this scheduler's
  # #io_wait from the worker before, and copy_stream raised ThreadError).
  def test_append_destination_copy_waits_on_its_worker
    data = Random.bytes(200_000)
    path = File.join(@dir, "append")
    dst = File.open(path, "ab")
    r, w = IO.pipe
    result = nil
    threads_before = Thread.list
    run_scheduler(10) do
      Fiber.schedule do
        result = IO.copy_stream(r, dst)
      rescue => result
      end
      Fiber.schedule do
        busy_until_workers_wait(threads_before)
        w.write(data)
        w.close
      end
    end
    assert_equal data.bytesize, result
    assert_equal sha(data), sha(File.binread(path))
  ensure
    [dst, r, w].each { |io| io&.close }
  end

  # Timeout around that copy: the scheduler interrupts its worker, whose
  # wait must end on the worker's own interrupt (patch 0016; it looked at
  # the copying thread's and polled again, and the scheduler's thread, which
  # waits for its worker, never ended).
  def test_append_destination_copy_interrupted
    path = File.join(@dir, "append")
    dst = File.open(path, "ab")
    r, w = IO.pipe                      # never written
    result = nil
    run_scheduler(10) do
      Fiber.schedule do
        Timeout.timeout(0.2) { IO.copy_stream(r, dst) }
      rescue Timeout::Error => result
      end
    end
    assert_kind_of Timeout::Error, result
  ensure
    [dst, r, w].each { |io| io&.close }
  end

  # 4. ---------------------------------------------------------------

  def broken_pipe_cases(cases)
    ours = in_fiber { cases.transform_values { |opts| run_case(epipe: true, **opts) } }
    plain = Thread.new { cases.transform_values { |opts| run_case(epipe: true, **opts) } }.value
    cases.each_key do |label|
      result = ours[label]
      assert_equal([-Errno::EPIPE::Errno], result.delete(:splices).map { |call| call[:result] }, "#{label}: io_splice results")
      yield label, result, plain[label]
    end
  end

  def test_broken_pipe
    cases = {
      "pipe to pipe" => {src: :pipe, dst: :pipe},
      "pipe to pipe, 1 byte" => {src: :pipe, dst: :pipe, length: 1},
      "unix to pipe" => {src: :unix, dst: :pipe},
      "tcp to pipe" => {src: :tcp, dst: :pipe},
      "pipe to unix" => {src: :pipe, dst: :unix},
      "tcp to unix, 64 KiB + 1" => {src: :tcp, dst: :unix, length: 65537},
    }
    broken_pipe_cases(cases) do |label, result, plain|
      assert_equal(["Errno::EPIPE", "Broken pipe - write"], result[:error], label)
      assert_equal(plain, result, "#{label}: differs from the copy without a scheduler")
    end
  end

  # From a regular file, without a scheduler (sendfile(2)) nothing was
  # copied and the file position stays where it was.
  def test_broken_pipe_from_a_file
    cases = {
      "file to pipe" => {src: :file, dst: :pipe},
      "file to unix" => {src: :file, dst: :unix},
      "file to pipe, from position 100" => {src: :file, dst: :pipe, src_seek: 100},
      "file to pipe, from offset 100" => {src: :file, dst: :pipe, offset: 100},
    }
    diffs = []
    broken_pipe_cases(cases) do |label, result, plain|
      assert_equal("Errno::EPIPE", result[:error]&.first, label)
      diffs << "#{label}\n  without a scheduler: #{plain.inspect}\n  io_splice:           #{result.inspect}" if plain != result
    end
    assert(diffs.empty?, "IO.copy_stream differs under IO::Uring::Scheduler:\n#{diffs.join("\n")}")
  end

  # 5. ---------------------------------------------------------------

  # +io+ under the lowest free descriptor number from +fd+ on.
  def move_to(io, fd, mode)
    return io if io.fileno == fd
    moved = IO.for_fd(io.fcntl(Fcntl::F_DUPFD, fd), mode)
    moved.sync = true
    io.close
    moved
  end

  # A pipe whose reading end has the descriptor number +fd+ (just closed),
  # or its writing end with +write_end+.
  def pipe_at(fd, write_end: false)
    r, w = binary_pipe
    if write_end
      r = move_to(r, fd + 1, "rb") if r.fileno == fd
      w = move_to(w, fd, "wb")
      assert_equal(fd, w.fileno, "descriptor #{fd} was not reused")
    else
      w = move_to(w, fd + 1, "wb") if w.fileno == fd
      r = move_to(r, fd, "rb")
      assert_equal(fd, r.fileno, "descriptor #{fd} was not reused")
    end
    [r, w]
  end

  # Closes +which+ end of a copy waiting on an empty pipe, from a sibling
  # fiber (after +delay+); then a pipe opened under the closed number
  # must neither lose nor get bytes.
  def close_by_fiber(which, delay)
    r, w = binary_pipe
    dr, dw = binary_pipe
    closing = which == :src ? r : dw
    fd = closing.fileno
    error = nil
    checks = {}
    scheduler = run_scheduler do |s|
      Fiber.schedule do
        IO.copy_stream(r, dw)
        error = :finished
      rescue IOError => error
      end
      Fiber.schedule do
        sleep delay if delay
        checks[:splicing] = s.splicing
        closing.close
        checks[:closed] = closing.closed?
        if which == :src
          r2, w2 = pipe_at(fd)
          w2.write("fresh")
          sleep 0.05 # time for a splice left behind to take it
          checks[:fresh] = available(r2)
          begin
            w.write("hello")
          rescue Errno::EPIPE
            checks[:epipe] = true
          end
        else
          r2, w2 = pipe_at(fd, write_end: true)
          w.write("hello")
          sleep 0.05 # time for a splice left behind to move it
          checks[:source] = available(r)
          checks[:stolen] = available(r2)
          w2.write("fresh")
          checks[:fresh] = available(r2)
        end
      ensure
        [r2, w2].each { |io| io&.close }
      end
    end
    label = "#{which} closed#{" after #{delay}s" if delay}"
    assert_kind_of(IOError, error, label)
    assert_equal("stream closed in another thread", error.message, label)
    assert_equal(1, checks[:splicing], "#{label}: the close came before the copy waited")
    assert_equal(true, checks[:closed], label)
    assert_equal("fresh", checks[:fresh], "#{label}: a pipe opened under the closed number lost its bytes")
    if which == :src
      assert_equal(true, checks[:epipe], "#{label}: the source pipe still has a reader")
    else
      assert_equal("hello", checks[:source], "#{label}: the source lost bytes after the close")
      assert_equal(:wait_readable, checks[:stolen], "#{label}: a pipe opened under the closed number got bytes")
    end
    assert_equal(IOError, scheduler.splices.last[5], label)
    dw.close unless dw.closed?
    assert_equal("", dr.read, "#{label}: the destination got bytes")
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_close_source_from_another_fiber
    close_by_fiber(:src, nil)
    close_by_fiber(:src, 0.05)
  end

  def test_close_destination_from_another_fiber
    close_by_fiber(:dst, nil)
    close_by_fiber(:dst, 0.05)
  end

  # 6. ---------------------------------------------------------------

  # A copy from an empty pipe in a scheduler's thread, whose root fiber
  # then runs +in_thread+ (with the scheduler) if given.  Yields (here)
  # that thread, once the copy waits in the kernel, the scheduler, and the
  # pipes; returns what the copy returned or raised, and the scheduler.
  def blocked_copy(in_thread = nil, timeout = 30)
    r, w = binary_pipe
    dr, dw = binary_pipe
    scheduler = outcome = nil
    thread = Thread.new do
      scheduler = IO::Uring::Scheduler.new.extend(CountSplices)
      Fiber.set_scheduler(scheduler)
      Fiber.schedule do
        outcome = IO.copy_stream(r, dw)
      rescue Exception => e
        outcome = e
      end
      in_thread&.call(scheduler)
    end
    thread.report_on_exception = false
    wait_until("the copy to wait") { (scheduler&.splicing == 1 && thread.status == "sleep") || !thread.alive? }
    sleep 0.02 # into the poll, past the first round of splices
    wait_until("the copy to wait") { thread.status == "sleep" || !thread.alive? }
    assert_predicate(thread, :alive?, "the copy did not wait")
    yield thread, scheduler, [r, w, dr, dw]
    assert_same(thread, thread.join(timeout), "the scheduler thread hung")
    [outcome, scheduler]
  ensure
    thread&.kill&.join(5)
    [r, w, dr, dw].each { |io| io&.close }
  end

  def close_by_thread(which)
    fresh = stolen = nil
    outcome, scheduler = blocked_copy do |thread, _, (r, w, dr, dw)|
      closing = which == :src ? r : dw
      fd = closing.fileno
      closer = Thread.new { closing.close; :closed }
      assert_same(closer, closer.join(10), "IO#close did not return")
      assert_equal(:closed, closer.value)
      if which == :src
        r2, w2 = pipe_at(fd)
        w2.write("fresh")
        sleep 0.05
        fresh = available(r2)
        assert_raise(Errno::EPIPE) { w.write("hello") }
      else
        r2, w2 = pipe_at(fd, write_end: true)
        w.write("hello")
        sleep 0.05
        stolen = available(r2)
        w2.write("fresh")
        fresh = available(r2)
        assert_equal("hello", r.read_nonblock(100), "the source lost bytes after the close")
      end
      assert_same(thread, thread.join(10), "the scheduler thread hung")
      dw.close
      assert_equal("", dr.read, "the destination got bytes")
    ensure
      [r2, w2].each { |io| io&.close }
    end
    assert_kind_of(IOError, outcome)
    assert_equal("stream closed in another thread", outcome.message)
    assert_equal(IOError, scheduler.splices.last[5])
    assert_equal("fresh", fresh, "a pipe opened under the closed number lost its bytes")
    assert_equal(:wait_readable, stolen, "a pipe opened under the closed number got bytes") if which == :dst
  end

  def test_close_source_from_another_thread
    close_by_thread(:src)
  end

  def test_close_destination_from_another_thread
    close_by_thread(:dst)
  end

  # 7. ---------------------------------------------------------------

  def test_timeout
    r, w = binary_pipe
    dr, dw = binary_pipe
    error = after = splicing = nil
    elapsed = nil
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    scheduler = run_scheduler(10) do |s|
      Fiber.schedule do
        Timeout.timeout(0.2) { IO.copy_stream(r, dw) }
      rescue Timeout::Error => error
        elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
        splicing = s.splicing
        w.write("after")
        sleep 0.05 # time for a splice left behind to take it
        after = available(r)
      end
    end
    closed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    assert_kind_of(Timeout::Error, error)
    assert_operator(elapsed, :>=, 0.19)
    assert_equal(0, splicing)
    # Newer timeout gems (Ruby 3.4.10's) raise their internal
    # Timeout::ExitException in the block and turn it into Timeout::Error
    # outside: either is what interrupted the hook.
    raised = [Timeout::Error]
    raised << Timeout::ExitException if defined?(Timeout::ExitException)
    assert_include(raised, scheduler.splices.last[5])
    assert_equal("after", after, "the source lost bytes after the timeout")
    assert_operator(closed, :<, 5, "the scheduler did not close promptly")
    dw.close
    assert_equal("", dr.read, "the destination got bytes")
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_fiber_raise
    r, w = binary_pipe
    dr, dw = binary_pipe
    error = after = nil
    scheduler = run_scheduler(10) do
      copier = Fiber.schedule do
        IO.copy_stream(r, dw)
      rescue Interrupted => error
        w.write("after")
        sleep 0.05 # time for a splice left behind to take it
        after = available(r)
      end
      Fiber.schedule do
        sleep 0.05
        # transfers to the copier, and this fiber is not resumed again
        copier.raise(Interrupted, "stop the copy")
      end
    end
    assert_instance_of(Interrupted, error)
    assert_equal("stop the copy", error.message)
    assert_equal(Interrupted, scheduler.splices.last[5])
    assert_equal("after", after, "the source lost bytes after Fiber#raise")
    dw.close
    assert_equal("", dr.read, "the destination got bytes")
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  def test_fiber_kill
    r, w = binary_pipe
    dr, dw = binary_pipe
    ensured = after = splicing = nil
    scheduler = run_scheduler(10) do |s|
      copier = Fiber.schedule do
        IO.copy_stream(r, dw)
        ensured = :finished
      ensure
        ensured ||= :ensured
      end
      Fiber.schedule do
        sleep 0.05
        copier.kill # transfers to the copier, and this fiber is not resumed again
      end
      Fiber.schedule do
        sleep 0.1
        splicing = s.splicing
        w.write("after")
        sleep 0.05 # time for a splice left behind to take it
        after = available(r)
      end
    end
    assert_equal(:ensured, ensured)
    assert_equal(0, splicing)
    assert_equal(1, scheduler.splices.size)
    assert_equal("after", after, "the source lost bytes after Fiber#kill")
    dw.close
    assert_equal("", dr.read, "the destination got bytes")
  ensure
    [r, w, dr, dw].each { |io| io&.close }
  end

  # Thread#raise lands in the thread's loop (the root fiber), the copy's
  # splices still in flight; the loop goes on and the copy finishes.
  def test_thread_raise_into_the_loop
    loop_error = nil
    tail = nil
    in_thread = lambda do |s|
      s.run # the loop, until every fiber is done
    rescue Interrupted => loop_error
    end
    outcome, scheduler = blocked_copy(in_thread) do |thread, _, (r, w, dr, dw)|
      thread.raise(Interrupted, "into the loop")
      wait_until("the loop to get the exception") { loop_error || !thread.alive? }
      w.write("tail")
      w.close
      assert_same(thread, thread.join(10), "the scheduler thread hung")
      dw.close
      tail = dr.read
    end
    assert_instance_of(Interrupted, loop_error)
    assert_equal(4, outcome, "the copy's result")
    assert_equal("tail", tail)
    assert_equal([4, 0], scheduler.splices.map(&:last).last(2))
  end

  def test_thread_kill
    after = nil
    outcome, scheduler = blocked_copy do |thread, _, (r, w, dr, dw)|
      thread.kill
      assert_same(thread, thread.join(10), "the killed thread did not end")
      GC.start
      w.write("after")
      sleep 0.05
      after = available(r)
      dw.close
      assert_equal("", dr.read, "the destination got bytes")
    end
    assert_nil(outcome, "the copy went on")
    assert_equal("after", after, "the source lost bytes after Thread#kill")
    # the kill reached the thread's end running the loop: the ring, its
    # pipes and workers are released all the same, not left to the GC
    assert_predicate(scheduler, :closed?)
  end

  # 8. ---------------------------------------------------------------

  def interrupt_copy_in_progress(dst_kind)
    bytes = Random.new(8).bytes(1 << 20)
    r, w = binary_pipe
    if dst_kind == :file
      dst_path = new_path("in_progress")
      dst = File.open(dst_path, "wb")
      received = -> { File.size(dst_path) }
    else
      dr, dst = binary_pipe
      got = 0
      reader = Thread.new do
        content = "".b
        while (chunk = dr.read(1 << 16))
          content << chunk
          got = content.bytesize
        end
        content
      end
      received = -> { got }
    end
    writer = Thread.new { w.write(bytes) } # the pipe stays open
    error = nil
    dst_pos = nil
    scheduler = run_scheduler do
      Fiber.schedule do
        IO.copy_stream(r, dst)
        error = :finished
      rescue IOError => error
      end
      Fiber.schedule do
        wait_until("the first MiB to arrive") { received.call >= bytes.bytesize || error }
        sleep 0.05 # the copy waits for more
        r.close
      end
    end
    assert_kind_of(IOError, error)
    assert_same(writer, writer.join(10), "the copy did not take all the writer wrote")
    results = scheduler.splices.map(&:last)
    assert_equal(IOError, results.last)
    assert_equal(bytes.bytesize, results[0...-1].sum, "the bytes io_splice returned: #{results.inspect}")
    if dst_kind == :file
      assert_equal(bytes.bytesize, dst.pos)
      dst.close
      content = File.binread(dst_path)
    else
      dst.close
      assert_same(reader, reader.join(10))
      content = reader.value
    end
    assert_equal(bytes.bytesize, content.bytesize)
    assert_equal(sha(bytes), sha(content), "the destination got other bytes than were written")
  ensure
    [writer, reader].each { |th| th&.kill&.join }
    [r, w, dr, dst].each { |io| io&.close }
  end

  def test_interrupt_copy_in_progress_to_file
    interrupt_copy_in_progress(:file)
  end

  def test_interrupt_copy_in_progress_to_pipe
    interrupt_copy_in_progress(:pipe)
  end

  # 9. ---------------------------------------------------------------

  def test_thousand_small_copies_reuse_the_pipes
    counts = []
    received = []
    copied = []
    baseline = nil
    scheduler = run_scheduler(60) do
      Fiber.schedule do
        dr, dw = binary_pipe
        baseline = open_fds.size
        1000.times do |i|
          r, w = binary_pipe
          w.write(format("%010d", i))
          w.close
          copied << IO.copy_stream(r, dw)
          received << dr.read(10)
          r.close
          counts << open_fds.size if i % 10 == 9
        end
      ensure
        dr&.close
        dw&.close
      end
    end
    assert_equal([10] * 1000, copied)
    assert_equal(Array.new(1000) { |i| format("%010d", i) }, received)
    assert_equal(2000, scheduler.splices.size)
    assert_operator(counts.max - baseline, :<=, 20, "descriptors grew: #{counts.uniq.inspect} over #{baseline}")
  end

  # Twenty copies in flight at once hold two pipes each; once they are
  # done the scheduler keeps at most 8 of them (16 descriptors).
  def test_pool_keeps_at_most_eight_pipes
    n = 20
    pairs = Array.new(n) { [binary_pipe, binary_pipe] }
    results = Array.new(n)
    peak = after = baseline = nil
    run_scheduler(30) do |s|
      baseline = open_fds.size
      pairs.each_with_index do |((r, _), (_, dw)), i|
        Fiber.schedule { results[i] = IO.copy_stream(r, dw) }
      end
      Fiber.schedule do
        wait_until("every copy to wait") { s.splicing == n }
        peak = open_fds.size - baseline
        pairs.each_with_index do |((_, w), (dr, _)), i|
          w.write("copy #{i}")
          w.close
        end
      end
      s.run
      after = open_fds.size - baseline
    end
    assert_equal(Array.new(n) { |i| "copy #{i}".bytesize }, results)
    pairs.each_with_index do |(_, (dr, dw)), i|
      dw.close
      assert_equal("copy #{i}", dr.read)
    end
    assert_operator(peak, :<=, 4 * n, "more than two pipes for one copy")
    assert_operator(peak, :>=, 2 * n, "copies in flight without a pipe")
    assert_operator(after, :<=, 16, "the pool keeps more than 8 pipes")
  ensure
    pairs&.flatten&.each(&:close)
  end

  # The pipes of the process, by inode number (one for both ends).
  def pipe_inodes
    Dir.children("/proc/self/fd").filter_map do |fd|
      link = File.readlink("/proc/self/fd/#{fd}") rescue next
      link[/\Apipe:\[(\d+)\]\z/, 1]&.to_i
    end.uniq
  end

  # Copies that find the source empty, take a pipe, get a few bytes and
  # end: the same pipe serves every one of them.  (Between pipes and
  # sockets a copy splices itself, through one pipe; with a file at one
  # end, two pipes are in flight, see test_pool_keeps_at_most_eight_pipes.)
  def test_pool_reuses_the_pipes
    rounds = 50
    dr, dw = binary_pipe
    held = []
    copied = []
    received = "".b
    run_scheduler do |s|
      base = pipe_inodes
      rounds.times do |i|
        r, w = binary_pipe
        Fiber.schedule { copied << IO.copy_stream(r, dw) }
        # the copy waits for the source, with its pipes
        held << pipe_inodes - base - [r.stat.ino]
        w.write(format("%010d", i))
        w.close
        s.run
        r.close
        # each splice to dw takes one of its 16 slots: empty it
        received << dr.read(10)
      end
    end
    assert_equal([10] * rounds, copied)
    assert_equal(Array.new(rounds) { |i| format("%010d", i) }.join, received)
    assert_equal([1] * rounds, held.map(&:size), "pipes held by a waiting copy")
    distinct = held.flatten.uniq.size
    assert_operator(distinct, :<=, 2, "#{distinct} pipes made for #{rounds} copies: the pool does not keep them")
  ensure
    [dr, dw].each { |io| io&.close }
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
        copied = Timeout.timeout(10) { in_fiber { IO.copy_stream(src, w) } }
        w.close
        assert_equal([6, "abcdef"], [copied, r.read], sender_stays ? "sender connected" : "sender gone")
      ensure
        closer&.join
        [src, sender, r, w].each { |io| io&.close }
      end
    end
  end

  # An IO#close inside Fiber.blocking released the source of a copy while
  # the copying fiber had still to unwind; #io_splice then lseek()ed the
  # number, which a new file had taken meanwhile, moving its position.
  def test_close_of_the_source_leaves_its_reused_number_alone
    File.binwrite("#{@dir}/src", "s" * (4 << 20))
    src = File.open("#{@dir}/src", "rb")
    r, w = IO.pipe # nobody reads r: the copy stalls once the pipe is full
    out = []
    run_scheduler do
      Fiber.schedule { IO.copy_stream(src, w) rescue out << $!.class }
      Fiber.schedule do
        sleep 0.1
        log = nil
        Fiber.blocking do
          fd = src.fileno
          src.close
          log = File.open("#{@dir}/log", "wb")
          out << (log.fileno == fd ? :number_reused : :number_not_reused)
        end
        sleep 0.1 # the copying fiber unwinds
        log.write("hello")
        log.close
      end
    end
    assert_equal [:number_reused, IOError], out
    assert_equal 5, File.size("#{@dir}/log")
  ensure
    [src, r, w].each { |io| io&.close }
  end

  # IO#close from another thread does not wait for the copying fiber.  Its
  # chain (poll on the source, then linked splices) was already submitted;
  # the kernel looks a linked operation's descriptor number up only when it
  # issues it, and the number had become an unrelated file's, which got the
  # copy's bytes.  The chain now names both ends through the ring's table
  # of registered files.
  def test_close_from_another_thread_then_number_reused
    src_r, src_w = IO.pipe
    dst_r, dst_w = IO.pipe
    out = []
    thread = Thread.new do
      Fiber.set_scheduler(IO::Uring::Scheduler.new)
      Fiber.schedule do
        IO.copy_stream(src_r, dst_w)
      rescue IOError => e
        out << e.class
      end
      Fiber.schedule do
        sleep 0.05
        t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        nil while Process.clock_gettime(Process::CLOCK_MONOTONIC) - t < 0.5 # the loop does not run
        # each Timeout's end enters the kernel, which issues the linked splices
        5.times { Timeout.timeout(5) { sleep 0.01 } }
      end
    end
    sleep 0.2
    number = dst_w.fileno
    dst_w.close
    log = File.open(new_path("unrelated.log"), "w")
    assert_equal number, log.fileno, "the unrelated file must reuse the number"
    src_w.write("SECRET DATA")
    src_w.close
    assert_same thread, thread.join(30), "the scheduler's thread hung"
    log.close
    assert_equal "", File.binread(log.path), "the copy wrote into an unrelated file"
    assert_equal [IOError], out
  ensure
    [src_r, src_w, dst_r, dst_w, log].each { |io| io&.close rescue nil }
  end
end
