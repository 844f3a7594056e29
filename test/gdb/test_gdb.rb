# frozen_string_literal: true
# tools/gdb (ruby_uring.py) against real processes: a ruby whose threads and
# fibers are parked in known operations (parked.rb), inspected live with
# `gdb -p` and from cores written by gcore, and closes in progress
# (closing.rb) stopped at a breakpoint.  Run by `make test-gdb`.
require "test/unit"
require "tmpdir"
require "timeout"

class TestGdbHelpers < Test::Unit::TestCase
  HERE = __dir__
  GDB_TIMEOUT = 120

  def self.tools
    ENV["RUBY_GDB_TOOLS"] || begin
      dir = HERE
      dir = File.dirname(dir) until dir == "/" || File.exist?(File.join(dir, "tools/gdb/ruby_uring.py"))
      File.join(dir, "tools/gdb/ruby_uring.py")
    end
  end

  def setup
    omit "gdb is not installed" unless system("gdb --version", out: File::NULL, err: File::NULL)
    omit "IO::Uring::Scheduler is not built" unless uring?
    omit "tools/gdb not found (set RUBY_GDB_TOOLS)" unless File.exist?(self.class.tools)
    @groups = []
    @dir = Dir.mktmpdir("test-gdb")
  end

  def teardown
    (@groups || []).each do |pgid|
      Process.kill(:KILL, -pgid)
      Process.wait(pgid)
    rescue Errno::ESRCH, Errno::ECHILD
    end
    FileUtils.rm_rf(@dir) if @dir
  end

  def uring?
    IO.popen([EnvUtil.rubybin, "-e", "require 'io/uring'; print IO::Uring::Scheduler.new.class"],
             err: File::NULL, &:read) == "IO::Uring::Scheduler"
  end

  # Line numbers of a fixture's "# gdb:NAME" markers.
  def marks(file)
    File.readlines(File.join(HERE, file)).each_with_index.to_h do |line, i|
      line[/# gdb:(\w+)/] ? [$1.to_sym, i + 1] : [nil, nil]
    end.tap { |h| h.delete(nil) }
  end

  # gdb -batch with the helpers loaded; killed (with what it runs) after
  # GDB_TIMEOUT seconds.
  def gdb(*args, commands)
    argv = ["timeout", "-s", "KILL", GDB_TIMEOUT.to_s,
            "gdb", "-nx", "-batch", "-ex", "set print thread-events off", "-ex", "source #{self.class.tools}"]
    commands.each { |c| argv.push("-ex", c) }
    out = IO.popen(argv + args, err: [:child, :out], pgroup: true, &:read)
    assert_not_equal(128 + 9, $?.exitstatus, "gdb killed after #{GDB_TIMEOUT}s:\n#{out}")
    assert_not_match(/Python Exception|Traceback|Error occurred in Python/, out)
    out
  end

  # What a command printed: the lines between two echo markers.
  def section(out, name)
    out[/^<<#{Regexp.escape(name)}>>\n(.*?)^<<\/#{Regexp.escape(name)}>>\n/m, 1] or flunk("no section #{name} in:\n#{out}")
  end

  def with_sections(commands)
    commands.flat_map { |c| ["echo <<#{c}>>\\n", c, "echo <</#{c}>>\\n"] }
  end

  COMMANDS = ["ruby threads -bt", "ruby fibers -bt", "uring ring", "uring ops", "uring state",
              "ruby fd-users", "ruby bt", "ruby bt thread 2"].freeze

  def start_parked
    r, w = IO.pipe
    # the rings in cores (bit 3 of coredump_filter): see the scheduler's docs
    pid = spawn({"RUBY_IO_URING_COREDUMP" => "1"}, EnvUtil.rubybin, File.join(HERE, "parked.rb"),
                out: w, err: File::NULL, pgroup: true)
    @groups << pid          # its `sleep` child too
    w.close
    line = Timeout.timeout(60) { r.gets }
    r.close
    assert_match(/^ready /, line.to_s)
    info = line.scan(/(\w+)=(\d+)/).to_h { |k, v| [k.to_sym, Integer(v)] }
    [info, File.readlink("/proc/#{info[:pid]}/exe")]
  end

  # The blocks of `ruby fibers`: header => its indented lines.
  def fiber_blocks(text)
    blocks = {}
    current = nil
    text.each_line(chomp: true) do |l|
      if l.start_with?("  fiber ")
        current = blocks[l] = []
      elsif current && l.start_with?("    ")
        current << l.strip
      end
    end
    blocks
  end

  def assert_fiber(blocks, header, *frames)
    found = blocks.select { |h, _| h.match?(header) }
    assert_equal(1, found.size, "one fiber matching #{header.inspect} in:\n#{blocks.keys.join("\n")}")
    frames.each do |f|
      assert(found.values.first.any? { |l| l.match?(f) },
             "#{f.inspect} in the backtrace of #{found.keys.first}:\n#{found.values.first.join("\n")}")
    end
  end

  # Whether the kernel maps the rings as memory a debugger can read and a
  # core can hold (not VM_PFNMAP/VM_DONTDUMP, as some kernels have).
  def rings_readable?(pid)
    File.read("/proc/#{pid}/smaps").split(/^(?=\h+-\h+ )/).grep(/io_uring/).all? do |m|
      !m[/^VmFlags:(.*)/, 1].split.intersect?(%w[pf dd io])
    end
  end

  def check_parked(out, info, where)
    m = marks("parked.rb")
    path = Regexp.escape(File.join(HERE, "parked.rb"))
    threads = section(out, "ruby threads -bt")
    assert_match(/^thread 1 lwp=#{info[:pid]} .*fiber=0x\h+ scheduler=nil\n\s+\[C\] sleep .*\n\s+#{path}:#{m[:main]}:in '<main>'/,
                 threads, where)
    assert_match(/^thread \d+ lwp=\d+ .*name="blocking-reader" fiber=root scheduler=nil\n\s+\[C\] read self=#<IO fd=#{info[:blocking]} 0x\h+>\n\s+#{path}:#{m[:blocking]}:in 'block in <main>'/,
                 threads, where)
    assert_match(/^thread \d+ lwp=\d+ .*name="uring" fiber=0x\h+ scheduler=IO::Uring::Scheduler 0x\h+$/, threads, where)

    fibers = section(out, "ruby fibers -bt")
    assert_match(/^thread \d+: IO::Uring::Scheduler 0x\h+ fibers=10$/, fibers, where)
    b = fiber_blocks(fibers)
    assert_fiber(b, /RESUMED: running \(current fiber of its thread\); event loop/)
    assert_fiber(b, /SUSPENDED: op READ fd=#{info[:read]} \(hook io_read fd=#{info[:read]}\)$/,
                 /^\[C\] read self=#<IO fd=#{info[:read]} /, /^#{path}:#{m[:read]}:in 'read_one'$/)
    assert_fiber(b, /SUSPENDED: op TIMEOUT until [\d.]+( \(in [\d.]+s\))?$/,
                 /^\[C\] kernel_sleep /, /^#{path}:#{m[:sleep]}:in 'nap'$/)
    assert_fiber(b, /SUSPENDED: op POLL_ADD fd=#{info[:splice_src]} \(hook io_splice fd=#{info[:splice_src]}\)$/,
                 /^\[C\] copy_stream self=IO$/, /^#{path}:#{m[:splice]}:/)
    assert_fiber(b, /SUSPENDED: op POLL_ADD fd=#{info[:pidfd]} \(hook io_wait fd=#{info[:pidfd]}\)$/,
                 /^\[C\] wait self=#<Process::Handle pid=#{info[:child]} /, /^#{path}:#{m[:handle]}:/)
    assert_fiber(b, /SUSPENDED: blocked \(#block\)$/, /:in 'pop'$/, /^#{path}:#{m[:pop]}:/)
    assert_fiber(b, /SUSPENDED: op READ_FIXED fd=#{info[:fixed]} \(hook io_read fd=#{info[:fixed]}\)$/,
                 /^\[C\] read self=#<IO::Buffer /, /^#{path}:#{m[:fixed]}:/)
    assert_fiber(b, /SUSPENDED: op READ fd=#{info[:timed]} until [\d.]+( \(in [\d.]+s\))? \(hook io_read fd=#{info[:timed]}\)$/,
                 /^#{path}:#{m[:timed]}:/)
    assert_fiber(b, /SUSPENDED: op TIMEOUT until .* \(timeout_complete\); op READ fd=#{info[:timeout]} \(hook io_read fd=#{info[:timeout]}\)$/,
                 /^#{path}:#{m[:timeout]}:in 'block \(3 levels\) in <main>'$/, /^\[C\] timeout_after /,
                 /timeout\.rb:\d+:in 'timeout'$/)
    assert_fiber(b, /SUSPENDED: op RECV fd=#{info[:pooled]} \(hook read_pooled fd=#{info[:pooled]}\)$/,
                 /^#{path}:#{m[:pooled]}:/)

    ring = section(out, "uring ring")
    assert_match(/ring fd=\d+ flags=\S*DEFER_TASKRUN\S* entries sq=\d+ cq=\d+ in-flight=9$/, ring, where)
    if @rings_readable
      assert_match(/^  sq head=(\d+) tail=\1 dropped=0 /, ring, where)
      assert_match(/^  cq head=\d+ tail=\d+ ready=\d+ overflow=0$/, ring, where)
    end

    ops = section(out, "uring ops")
    assert_match(/ops=9$/, ops, where)
    assert_equal(9, ops.scan(/^  op 0x\h+ fiber=0x\h+ op /).size, ops)

    state = section(out, "uring state")
    assert_match(/^  splice pipes 1: \(\d+,\d+ busy \d+KiB\)$/, state, where)
    assert_match(/^  registered buffers 1 \(table: yes\)/, state, where)
    assert_match(/^    slot 0 #<IO::Buffer 0x\h+> base=0x\h+ size=4096$/, state, where)
    assert_match(/^  read pool: 8 buffers of 4096 bytes/, state, where)
    assert_match(/^  blocked 1: 0x\h+$/, state, where)
    assert_equal(7, state.scan(/^    (io_read|io_wait|io_splice|read_pooled) fd=/).size, state)

    # gdb's selected thread is the main thread's
    assert_match(/\Afiber 0x\h+ RESUMED\n    \[C\] sleep .*\n    #{path}:#{m[:main]}:in '<main>'\n\z/,
                 section(out, "ruby bt"), where)
    assert_match(/\Afiber \(root, rb_fiber_t 0x\h+\) RESUMED\n    \[C\] read self=#<IO fd=#{info[:blocking]} 0x\h+>\n    #{path}:#{m[:blocking]}:in 'block in <main>'\n\z/,
                 section(out, "ruby bt thread 2"), where)

    users = section(out, "ruby fd-users")
    %i[read splice_src splice_dst pidfd fixed timed timeout pooled].each do |k|
      assert_match(/^fd #{info[k]}: fiber 0x\h+ of thread \d+ in a scheduler hook$/, users, "#{where}: #{k}")
    end
    assert_match(/^fd #{info[:blocking]}: thread \d+ blocking call$/, users, where)
  end

  def normalize(out)
    out.gsub(/ \(in -?[\d.]+s\)/, "")
  end

  def test_parked_process_live_and_from_cores
    info, exe = start_parked
    pid = info[:pid]
    filter = "/proc/#{pid}/coredump_filter"
    assert_equal(0x8, File.read(filter).to_i(16) & 0x8, "RUBY_IO_URING_COREDUMP=1 sets bit 3")
    @rings_readable = rings_readable?(pid)
    live = gdb("-p", pid.to_s, with_sections(COMMANDS) + ["gcore #{@dir}/core"])
    omit "gdb cannot attach here: #{live[/ptrace: .*/]}" if live.include?("ptrace: Operation not permitted")
    check_parked(live, info, "live")
    assert_path_exist("#{@dir}/core")

    core = gdb(exe, "#{@dir}/core", with_sections(COMMANDS))
    check_parked(core, info, "core")
    COMMANDS.each do |c|
      next if c == "uring ring" && !@rings_readable
      assert_equal(normalize(section(live, c)), normalize(section(core, c)), "#{c}: live and core")
    end
    File.unlink("#{@dir}/core")

    # The default filter leaves the rings out: said, not read as zeros.
    File.write(filter, "0x33")
    assert_match(/Saved corefile/, gdb("-p", pid.to_s, ["gcore #{@dir}/core2"]))
    bare = gdb(exe, "#{@dir}/core2", with_sections(["uring ring", "ruby fibers"]))
    assert_match(/^  ring memory not in this core \(set bit 3 of \/proc\/PID\/coredump_filter/,
                 section(bare, "uring ring"))
    assert_not_match(/^  sq head=/, section(bare, "uring ring"))
    assert_match(/fibers=10$/, section(bare, "ruby fibers"))
  ensure
    File.unlink("#{@dir}/core2") if @dir && File.exist?("#{@dir}/core2")
  end

  def test_c_stacks_of_suspended_fibers
    omit "C stacks of fibers: amd64 only" unless RUBY_PLATFORM.start_with?("x86_64")
    info, _ = start_parked
    out = gdb("-p", info[:pid].to_s, ["ruby fibers -c"])
    omit "gdb cannot attach here" if out.include?("ptrace: Operation not permitted")
    b = fiber_blocks(out)
    # Each suspended fiber's stack, from the switch down to its hook.
    assert_fiber(b, /op READ fd=#{info[:read]} /, /^C: rb_fiber_transfer at /, /^C: hook_wait at .*op\.c:\d+$/,
                 /^C: scheduler_io_read at .*io\.c:\d+$/)
    assert_fiber(b, /op POLL_ADD fd=#{info[:splice_src]} /, /^C: hook_poll at /, /^C: scheduler_io_splice at /)
    assert_fiber(b, /blocked \(#block\)/, /^C: scheduler_block at /)
    assert_fiber(b, /RESUMED/, /^C: running: the stack of LWP \d+/)
    # One fiber by its VALUE, and by its rb_fiber_t.
    fiber = b.keys.grep(/op READ fd=#{info[:read]} /).first[/fiber (0x\h+)/, 1]
    out = gdb("-p", info[:pid].to_s, ["ruby bt -c #{fiber}", "ruby bt ((struct RTypedData *)#{fiber})->data"])
    m = marks("parked.rb")
    assert_equal(2, out.scan(/^fiber #{fiber} SUSPENDED\n    \[C\] io_read .*\n    \[C\] read .*\n    \S+parked\.rb:#{m[:read]}:in 'read_one'$/).size, out)
    assert_match(/^    C: scheduler_io_read at /, out)
    # The thread's own frames are the same afterwards.
    out = gdb("-p", info[:pid].to_s, with_sections(["bt 8"]) + ["ruby fibers -c"] +
                                     with_sections(["bt 8"]).map { |c| c.sub(/>>/, "2>>") })
    assert_match(/^#7 /, section(out, "bt 8"))
    assert_equal(section(out, "bt 8"), section(out, "bt 82"))
  end

  def test_closes_in_progress
    m = marks("closing.rb")
    path = Regexp.escape(File.join(HERE, "closing.rb"))
    cmds = ["set breakpoint pending on", "break notify_fd_close_sleep", "run"] +
           with_sections(["ruby fd-users", "uring state", "ruby fibers -bt"]).map { |c| c.sub(/>>/, "1>>") } +
           ["gcore #{@dir}/closing.core", "continue"] +
           with_sections(["ruby fd-users", "ruby threads -bt"]).map { |c| c.sub(/>>/, "2>>") } +
           ["continue"]
    out = gdb("--args", EnvUtil.rubybin, File.join(HERE, "closing.rb"), cmds)
    assert_match(/^done$/, out)
    fiber_fd = out[/^fiber close fd=(\d+)/, 1]
    thread_fd = out[/^thread close fd=(\d+)/, 1]

    # A fiber closing what another fiber of its scheduler reads.
    users = section(out, "ruby fd-users1")
    assert_match(/\Aclosing fd #{fiber_fd}: IO#close by thread \d+ fiber (0x\h+) waits for 1 user\(s\)\n  fiber (0x\h+) of thread \d+ in a scheduler hook\n\z/, users)
    closer, reader = users.scan(/fiber (0x\h+)/).flatten
    assert_match(/^    io_read fd=#{fiber_fd} fiber=#{reader} ops=\d interrupt=#<IOError 0x\h+>$/,
                 section(out, "uring state1"))
    # The same from a core written there.
    core = gdb(EnvUtil.rubybin, "#{@dir}/closing.core", with_sections(["ruby fd-users"]))
    File.unlink("#{@dir}/closing.core")
    assert_equal(users, section(core, "ruby fd-users"))
    b = fiber_blocks(section(out, "ruby fibers -bt1"))
    assert_fiber(b, /^  fiber #{closer} RESUMED/, /^\[C\] close self=#<IO fd=-1 /, /^#{path}:#{m[:fiber_closer]}:/)
    assert_fiber(b, /^  fiber #{reader} SUSPENDED: in hook io_read fd=#{fiber_fd} interrupted by #<IOError/,
                 /^#{path}:#{m[:fiber_reader]}:/)

    # A thread closing what another thread reads.
    users = section(out, "ruby fd-users2")
    assert_match(/\Aclosing fd #{thread_fd}: IO#close by thread 1 waits for 1 user\(s\)\n  thread (\d+) blocking call interrupted\n\z/, users)
    threads = section(out, "ruby threads -bt2")
    assert_match(/^thread 1 .*\n\s+\[C\] close self=#<IO fd=-1 .*\n\s+#{path}:#{m[:thread_closer]}:in '<main>'/, threads)
    assert_match(/\s+\[C\] read self=#<IO fd=-1 .*\n\s+#{path}:#{m[:thread_reader]}:/, threads)
  end

  def test_errors
    info, _ = start_parked
    out = gdb("-p", info[:pid].to_s, ["ruby threads"])
    omit "gdb cannot attach here" if out.include?("ptrace: Operation not permitted")
    scheduler = out[/scheduler=IO::Uring::Scheduler (0x\h+)/, 1]
    main_fiber = out[/^thread 1 .* fiber=(0x\h+)/, 1]
    assert_not_nil(scheduler, out)
    assert_not_nil(main_fiber, out)
    out = gdb("-p", info[:pid].to_s, ["ruby bt #{scheduler}", "ruby bt 0x10", "uring ring #{main_fiber}",
                                      "ruby fibers -x", "ruby bt thread 99", "uring ops 0x10",
                                      "ruby bt no_such_symbol", "ruby bt thread x",
                                      "ruby bt rb_fiber_current()", "ruby fd-users zz",
                                      "show may-call-functions"])
    assert_match(/^#{scheduler} is not a fiber$/, out)
    assert_match(/^ruby bt: Cannot access memory at address 0x10$/, out)
    assert_match(/^#{main_fiber} is not an IO::Uring::Scheduler$/, out)
    assert_match(/^unknown option -x/, out)
    assert_match(/^no Ruby thread 99 /, out)
    assert_match(/^0x10 is not an IO::Uring::Scheduler$/, out)
    assert_match(/No symbol "no_such_symbol" in current context/, out)
    assert_match(/^no Ruby thread 0 /, out)
    # never a call into the process, even when the argument asks for one
    assert_match(/Cannot call functions in the program: may-call-functions is off/, out)
    assert_match(/No symbol "zz" in current context/, out)
    assert_match(/Permission to call functions in the program is on/, out)
    # A program that is not ruby.
    out = gdb("/bin/true", ["ruby threads", "uring ring"])
    assert_equal(2, out.scan(/no ruby here/).size, out)
  end
end
