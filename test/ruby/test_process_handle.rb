# frozen_string_literal: false
require 'test/unit'
require 'timeout'

class TestProcessHandle < Test::Unit::TestCase
  PIDFD_RE = /\Aanon_inode:\[?pidfd\]?\z/

  def setup
    omit "no Process::Handle" unless defined?(Process::Handle)
    @handles = []   # children: killed and reaped if a test left them
    @opened = []    # Process::Handle.open of processes we must not kill
  end

  def teardown
    (@handles || []).each {|h| reap(h)}
    (@opened || []).each {|h| h.close}
  end

  # Tracks a handle so that teardown reaps and closes it.
  def track(h)
    @handles << h
    h
  end

  def spawn_handle(*args, **opts)
    track(Process::Handle.spawn(*args, **opts))
  end

  def reap(h)
    return if h.closed?
    unless h.status
      begin
        h.kill(:KILL)
      rescue SystemCallError, IOError
      end
      begin
        h.wait(2)
      rescue SystemCallError, IOError
      end
    end
  ensure
    h.close
  end

  def fds
    Dir.children("/proc/self/fd").size
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def omit_unless_pidfd
    omit "no pidfds (Process::Handle.race_free? is false)" unless Process::Handle.race_free?
  end

  # --- 1. basics ---------------------------------------------------------

  def test_pid_and_exit_status
    h = spawn_handle("exit 3")
    assert_kind_of(Integer, h.pid)
    assert_operator(h.pid, :>, 0)
    st = h.wait
    assert_instance_of(Process::Status, st)
    assert_predicate(st, :exited?)
    assert_equal(3, st.exitstatus)
    assert_equal(h.pid, st.pid)
    assert_predicate(st, :frozen?)
    assert_equal(h.pid, h.pid, "pid stays after the reap")
  end

  def test_signal_death
    h = spawn_handle("sleep", "5")
    assert_same(h, h.kill(:KILL))
    st = h.wait
    assert_predicate(st, :signaled?)
    assert_equal(Signal.list["KILL"], st.termsig)
  end

  def test_wait_returns_same_status
    h = spawn_handle("exit 4")
    assert_nil(h.status, "no status before the reap")
    st = h.wait
    assert_same(st, h.wait)
    assert_same(st, h.status)
    assert_same(st, h.wait_nonblock)
    assert_same(st, h.wait(0))
    assert_predicate(h, :exited?)
    assert_not_predicate(h, :alive?)
  end

  def test_wait_does_not_set_last_status
    Process.wait(Process.spawn("exit 9"))
    assert_equal(9, $?.exitstatus)
    h = spawn_handle("exit 5")
    st = h.wait
    assert_equal(5, st.exitstatus)
    assert_equal(9, $?.exitstatus, "Process::Handle#wait must not set $?")
    assert_equal(h.pid, Process.wait(h))
    assert_same(st, $?, "Process.wait(handle) sets $? to the cached status")
  end

  def test_process_wait_sets_last_status
    h = spawn_handle("exit 6")
    assert_equal(h.pid, Process.wait(h))
    assert_equal(6, $?.exitstatus)
    assert_same($?, h.status)
    assert_same($?, h.wait)
    assert_equal(h.pid, Process.wait(h), "cached: again")
  end

  def test_process_wait_nohang
    h = spawn_handle("sleep", "5")
    Process.wait(Process.spawn("exit 1"))
    assert_nil(Process.wait(h, Process::WNOHANG))
    assert_nil($?)
    assert_nil(h.status)
    h.kill(:TERM)
    assert_equal(h.pid, Process.wait(h))
    assert_equal(Signal.list["TERM"], $?.termsig)
  end

  def test_wait2_and_status_wait
    h = spawn_handle("exit 8")
    pid, st = Process.wait2(h)
    assert_equal(h.pid, pid)
    assert_equal(8, st.exitstatus)
    assert_same(st, h.status)
    assert_same(st, Process::Status.wait(h))

    h2 = spawn_handle("exit 2")
    st2 = Process::Status.wait(h2)
    assert_equal(h2.pid, st2.pid)
    assert_equal(2, st2.exitstatus)
    assert_same(st2, h2.wait)
  end

  def test_wait_nonblock
    h = spawn_handle("sleep", "0.1")
    assert_nil(h.wait_nonblock)
    assert_nil(h.status)
    deadline = monotonic + 5
    st = nil
    until st = h.wait_nonblock
      flunk "not reaped in 5 s" if monotonic > deadline
      sleep 0.01
    end
    assert_equal(0, st.exitstatus)
    assert_same(st, h.wait)
  end

  def test_stopped_status_is_not_cached
    h = spawn_handle("sleep", "5")
    h.kill(:STOP)
    assert_equal(h.pid, Timeout.timeout(5) { Process.wait(h, Process::WUNTRACED) })
    assert_predicate($?, :stopped?)
    assert_nil(h.status, "a stop is not the final status")
    h.kill(:CONT)
    h.kill(:TERM)
    st = h.wait(5)
    assert_not_nil(st)
    assert_equal(Signal.list["TERM"], st.termsig)
  end

  def test_inspect
    h = spawn_handle("exit 3")
    pid = h.pid
    assert_equal("#<Process::Handle: pid #{pid} running>", h.inspect)
    h.wait
    assert_equal("#<Process::Handle: pid #{pid} exit 3>", h.inspect)
  end

  def test_flags
    h = spawn_handle("exit 0")
    assert_equal(Process::Handle.race_free?, h.race_free?)
    assert_not_predicate(h, :adopted?)
    assert_not_predicate(h, :detached?)
    assert_not_predicate(h, :closed?)
    h.wait
  end

  def test_spawn_and_fork_still_return_integers
    pid = Process.spawn("exit 0")
    assert_kind_of(Integer, pid)
    Process.wait(pid)
    pid = fork { exit!(0) }
    assert_kind_of(Integer, pid)
    Process.wait(pid)
    assert_predicate($?, :success?)
  end

  def test_no_integer_conversion
    h = spawn_handle("exit 0")
    assert_raise(TypeError) { Integer(h) }
    assert_not_respond_to(h, :to_int)
    assert_raise(TypeError) { Process.getpgid(h) }
    h.wait
  end

  def test_new_undefined
    assert_raise(NoMethodError) { Process::Handle.new }
    assert_raise(TypeError) { Process::Handle.allocate }
  end

  # --- 2. wait(timeout) --------------------------------------------------

  def test_wait_timeout
    h = spawn_handle("sleep", "5")
    t = monotonic
    assert_nil(h.wait(0.1))
    elapsed = monotonic - t
    assert_operator(elapsed, :>=, 0.09)
    assert_operator(elapsed, :<, 1.5)
    assert_nil(h.wait(0))
    assert_nil(h.status)
    assert_predicate(h, :alive?)
    assert_not_predicate(h, :exited?)
    h.kill
    st = h.wait
    assert_equal(Signal.list["TERM"], st.termsig)
    assert_not_predicate(h, :alive?)
    assert_predicate(h, :exited?)
  end

  def test_wait_negative_timeout
    h = spawn_handle("exit 0")
    assert_raise(ArgumentError) { h.wait(-1) }
    assert_raise(ArgumentError) { h.wait(-0.5) }
    assert_raise(TypeError) { h.wait("1") }
    assert_equal(0, h.wait.exitstatus)
  end

  # An infinite timeout waits as wait(nil) does (IO#wait_readable would
  # raise RangeError for it).
  def test_wait_infinite_timeout
    h = spawn_handle("sleep", "0.1")
    st = h.wait(Float::INFINITY)
    assert_not_nil(st)
    assert_equal(0, st.exitstatus)
  end

  # --- 3. to_io ------------------------------------------------------------

  def test_to_io_select
    omit_unless_pidfd
    h = spawn_handle("sleep", "0.2")
    io = h.to_io
    assert_kind_of(IO, io)
    assert_same(io, h.to_io)
    assert_match(PIDFD_RE, File.readlink("/proc/self/fd/#{io.fileno}"))
    assert_nil(IO.select([io], nil, nil, 0), "not readable while running")
    assert_predicate(h, :alive?)
    assert_equal([[io], [], []], IO.select([io], nil, nil, 5))
    assert_predicate(h, :exited?, "exited, not reaped yet")
    assert_nil(h.status)
    assert_equal(0, h.wait.exitstatus)
  end

  def test_to_io_close_on_exec_not_inherited
    omit_unless_pidfd
    h = spawn_handle("sleep", "5")
    n = h.to_io.fileno
    assert_predicate(h.to_io, :close_on_exec?)
    assert_match(PIDFD_RE, File.readlink("/proc/self/fd/#{n}"))
    [->(o) {Process::Handle.spawn("readlink", "/proc/self/fd/#{n}", **o)},
     ->(o) {Process.spawn("readlink", "/proc/self/fd/#{n}", **o)}].each do |sp|
      IO.pipe do |r, w|
        c = sp.call(out: w, err: File::NULL)
        w.close
        out = r.read
        c.is_a?(Integer) ? Process.wait(c) : track(c).wait
        assert_not_match(/pidfd/, out, "the child inherited fd #{n}")
      end
    end
  end

  def test_to_io_nonblock
    omit_unless_pidfd
    require 'io/nonblock'
    h = spawn_handle("sleep", "0.1")
    h.to_io.nonblock = true
    assert_nil(h.wait_nonblock)
    assert_nil(h.wait(0.01))
    st = h.wait
    assert_equal(0, st.exitstatus)
    assert_same(st, h.wait_nonblock)
  end

  def test_to_io_without_pidfd
    omit "pidfds in use" if Process::Handle.race_free?
    h = spawn_handle("exit 0")
    assert_raise(NotImplementedError) { h.to_io }
    assert_not_predicate(h, :race_free?)
    h.wait
  end

  # --- 4. kill -------------------------------------------------------------

  def test_kill_after_wait
    h = spawn_handle("exit 0")
    h.wait
    assert_raise(Errno::ESRCH) { h.kill }
    assert_raise(Errno::ESRCH) { h.kill(0) }
    assert_raise(Errno::ESRCH) { Process.kill(:TERM, h) }
  end

  def test_process_kill_with_handle
    h = spawn_handle("sleep", "5")
    assert_equal(1, Process.kill(0, h))
    assert_same(h, h.kill(0))
    assert_nil(h.wait(0.01), "signal 0 does nothing")
    assert_equal(1, Process.kill(:TERM, h))
    assert_equal(Signal.list["TERM"], h.wait.termsig)
  end

  def test_kill_process_group
    [->(h) {h.kill("-TERM")},
     ->(h) {h.kill(-Signal.list["TERM"])},
     ->(h) {Process.kill("-TERM", h)},
     ->(h) {Process.kill(-Signal.list["TERM"], h)}].each_with_index do |sig, i|
      h = spawn_handle("sleep", "5", pgroup: true)
      member = Process.spawn("sleep", "5", pgroup: h.pid)
      begin
        sig.call(h)
        assert_equal(Signal.list["TERM"], h.wait(5)&.termsig, "leader, variant #{i}")
        _, st = Timeout.timeout(5) { Process.wait2(member) }
        member = nil
        assert_equal(Signal.list["TERM"], st.termsig, "group member, variant #{i}")
      ensure
        if member
          Process.kill(:KILL, member) rescue nil
          Process.wait(member) rescue nil
        end
      end
    end
  end

  # --- 5. statuses reaped by someone else ---------------------------------

  def test_stolen_status
    h = spawn_handle("exit 4")
    Thread.new { Process.wait(h.pid) }.join   # another thread steals it
    if Process::Handle.race_free?
      st = h.wait
      assert_equal(h.pid, st.pid)
      assert_equal(4, st.exitstatus)
      assert_same(st, h.wait)
      assert_equal(h.pid, Process.wait(h))
    else
      assert_raise(Errno::ECHILD) { h.wait }
    end
    assert_raise(Errno::ESRCH) { h.kill(0) }
  end

  def test_stolen_status_concurrent
    omit_unless_pidfd
    h = spawn_handle("sleep", "0.1")
    thief = Thread.new do
      Process.wait2(h.pid)[1]
    rescue Errno::ECHILD
      nil
    end
    st = h.wait(5)
    stolen = thief.value
    assert_not_nil(st)
    assert_equal(0, st.exitstatus)
    assert_equal(0, stolen.exitstatus) if stolen
  end

  def test_stolen_status_sigchld_ignored
    h = nil
    old = trap(:CHLD, "IGNORE")
    begin
      h = spawn_handle("exit 5")   # reaped by the kernel at exit
      if Process::Handle.race_free?
        st = h.wait(5)
        assert_not_nil(st)
        assert_equal(5, st.exitstatus)
      else
        assert_raise(Errno::ECHILD) { h.wait(5) }
      end
    ensure
      trap(:CHLD, old)
    end
  end

  def test_stolen_status_without_pidfd
    assert_separately([{"RUBY_PROCESS_HANDLE_PIDFD" => "0"}], <<~'end;')
      assert_equal(false, Process::Handle.race_free?)
      h = Process::Handle.spawn("exit 4")
      assert_equal(false, h.race_free?)
      assert_raise(NotImplementedError) { h.to_io }
      Process.wait(h.pid)
      assert_raise(Errno::ECHILD) { h.wait }
      assert_raise(Errno::ECHILD) { h.wait_nonblock }
      assert_raise(Errno::ECHILD) { Process.wait(h) }
      st = Process::Status.wait(h)
      assert_equal(-1, st.pid)
      assert_predicate(h, :exited?)
      assert_match(/lost/, h.inspect)
      assert_raise(Errno::ESRCH) { h.kill(0) }
    end;
  end

  # --- 6. many waiters -----------------------------------------------------

  # Without pidfds, concurrent waiters block in waitpid(pid) each: the
  # kernel gives the status to one, and the others, told ECHILD, must wait
  # for it to be cached instead of raising.
  def test_many_waiters
    h = spawn_handle("sleep", "0.3")
    threads = 10.times.map { Thread.new { h.wait } }
    threads += 5.times.map { Thread.new { Fiber.new { h.wait }.resume } }
    threads << Thread.new { Process::Status.wait(h) }
    threads << Thread.new { Process.wait2(h)[1] }
    sleep 0.05
    st = h.wait
    assert_equal(0, st.exitstatus)
    threads.each_with_index do |t, i|
      assert_same(st, t.value, "waiter #{i}")
    end
    assert_same(st, Fiber.new { h.wait }.resume)
    assert_raise(Errno::ECHILD, "reaped exactly once") { Process.wait(h.pid) }
    assert_equal(h.pid, Process.wait(h))
  end

  # See test_many_waiters; this one always runs without pidfds, with and
  # without M:N threads (which start the waiters at other times).
  def test_many_waiters_without_pidfd
    [{}, {"RUBY_MN_THREADS" => "1"}].each do |env|
      many_waiters_without_pidfd(env)
    end
  end

  def many_waiters_without_pidfd(env)
    assert_separately([{"RUBY_PROCESS_HANDLE_PIDFD" => "0", **env}], <<~'end;')
      assert_equal(false, Process::Handle.race_free?)
      10.times do |i|
        h = Process::Handle.spawn("sleep", "0.05")
        threads = 8.times.map { Thread.new { h.wait rescue $! } }
        results = threads.map(&:value)
        h.wait rescue nil
        assert_equal([0] * 8, results.map {|r| r.is_a?(Exception) ? r.class : r.exitstatus}, "round #{i}")
        assert_equal(1, results.uniq.size)
      end
    end;
  end

  # --- 7. exec failure -----------------------------------------------------

  def test_exec_failure_leaves_no_fd_and_no_zombie
    h = spawn_handle("exit 0")
    h.wait
    h.close
    n = fds
    50.times do
      assert_raise(Errno::ENOENT) { Process::Handle.spawn("/nonexistent/x") }
    end
    assert_raise(Errno::ENOENT) { Process::Handle.spawn("/nonexistent/x", out: File::NULL) }
    assert_raise(Errno::ENOENT) { Process::Handle.spawn("true", chdir: "/nonexistent/dir") }
    assert_equal(n, fds)
    assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
  end

  # Without privileges spawn takes the vfork-like clone (CLONE_VM).
  def test_vfork_like_path_without_privilege
    omit "needs root to drop privileges" unless Process.euid == 0
    assert_separately([], <<~'end;')
      Process::Sys.setresgid(65534, 65534, 65534)
      Process::Sys.setresuid(65534, 65534, 65534)
      h = Process::Handle.spawn("exit 3")
      assert_equal(3, h.wait.exitstatus)
      h.close
      h = Process::Handle.spawn("sleep", "5")
      h.kill(:KILL)
      assert_equal(9, h.wait.termsig)
      h.close
      n = Dir.children("/proc/self/fd").size
      20.times do
        assert_raise(Errno::ENOENT) { Process::Handle.spawn("/nonexistent/x") }
      end
      assert_equal(n, Dir.children("/proc/self/fd").size)
      assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
    end;
  end

  # --- 8. fork -------------------------------------------------------------

  def test_fork_with_block
    h = track(Process::Handle.fork { exit 7 })
    assert_instance_of(Process::Handle, h)
    assert_equal(Process::Handle.race_free?, h.race_free?)
    assert_equal(7, h.wait.exitstatus)
  end

  def test_fork_without_block
    h = Process::Handle.fork
    exit!(5) if h.nil?
    track(h)
    assert_equal(5, h.wait.exitstatus)
  end

  def test_handle_inherited_across_fork
    h = spawn_handle("sleep", "0.3")
    IO.pipe do |r, w|
      c = track(Process::Handle.fork do
        r.close
        res = begin h.wait; "waited"; rescue Errno::ECHILD; "ECHILD"; end
        k = begin h.kill(0).equal?(h) ? "kill0" : "?"; rescue => e; e.class.name; end
        w.write "#{res} #{k}"
        w.close
        exit!(0)
      end)
      w.close
      assert_equal("ECHILD kill0", r.read)
      assert_predicate(c.wait, :success?)
    end
    assert_nil(h.status)
    assert_equal(0, h.wait.exitstatus, "the parent still reaps it")
  end

  # --- 9. pid reuse ----------------------------------------------------------

  PID_REUSE_SCRIPT = <<~'end;'
    $stdout.sync = true
    puts "ns-ok #{Process.pid}"
    begin
      File.write("/proc/sys/kernel/ns_last_pid", "100")
    rescue SystemCallError => e
      puts "skip: ns_last_pid: #{e.message}"
      exit!(0)
    end
    h = Process::Handle.spawn("true")
    Process.wait(h.pid)                   # stolen: the pid is free again
    victim = nil
    10.times do
      File.write("/proc/sys/kernel/ns_last_pid", (h.pid - 1).to_s)
      pid = Process.spawn("sleep", "10")
      if pid == h.pid
        victim = pid
        break
      end
      Process.kill(:KILL, pid)
      Process.wait(pid)
    end
    unless victim
      puts "skip: pid #{h.pid} not reused"
      exit!(0)
    end
    puts "reused: #{victim == h.pid}"
    puts "handle_kill: #{begin h.kill(:TERM); 'sent'; rescue => e; e.class; end}"
    puts "process_kill: #{begin Process.kill(:TERM, h); 'sent'; rescue => e; e.class; end}"
    puts "alive: #{Process.kill(0, victim) == 1}"
    puts "waitpid: #{Process.waitpid(victim, Process::WNOHANG).inspect}"
    puts "status: #{begin h.wait.exitstatus; rescue => e; e.class; end}"
    Process.kill(:TERM, victim)                 # what a pid does
    puts "victim: #{Process.wait2(victim)[1].termsig}"
  end;

  def test_kill_after_pid_reuse
    omit_unless_pidfd
    require 'envutil' unless defined?(EnvUtil)
    ruby = [EnvUtil.rubybin, "--disable=gems", *$:.map {|l| "-I#{l}"}, "-e", PID_REUSE_SCRIPT]
    out = nil
    [%w[unshare -pf --mount-proc], %w[unshare -Urpf --mount-proc]].each do |unshare|
      begin
        out = IO.popen([*unshare, *ruby], err: [:child, :out], &:read)
      rescue SystemCallError => e
        omit "unshare: #{e.message}"
      end
      break if out.include?("ns-ok")
    end
    omit "cannot create a pid namespace: #{out}" unless out.include?("ns-ok")
    omit out[/^skip: .*/] if out =~ /^skip: /
    status = $?
    res = out.scan(/^(\w+): (.*)$/).to_h
    assert_equal("true", res["reused"], out)
    assert_equal("Errno::ESRCH", res["handle_kill"], "the handle reached the new process\n#{out}")
    assert_equal("Errno::ESRCH", res["process_kill"], out)
    assert_equal("true", res["alive"], out)
    assert_equal("nil", res["waitpid"], out)
    assert_equal("0", res["status"], "recovered after the steal\n#{out}")
    assert_equal(Signal.list["TERM"].to_s, res["victim"], "control: a pid reaches the new process\n#{out}")
    assert_predicate(status, :success?, out)
  end

  # --- 10. detach ------------------------------------------------------------

  def test_detach
    threads = Thread.list.size
    h = spawn_handle("sleep", "0.2")
    assert_same(h, h.detach)
    assert_predicate(h, :detached?)
    assert_same(h, h.detach, "twice")
    assert_equal(threads, Thread.list.size, "no thread per detached process")
    deadline = monotonic + 3
    sleep 0.05 until h.status || monotonic > deadline   # no wait, no reaping call
    st = h.status
    assert_not_nil(st, "not reaped on SIGCHLD")
    assert_equal(0, st.exitstatus)
    assert_equal(threads, Thread.list.size)
    assert_same(st, h.wait)
    assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
  end

  def test_process_detach_with_handle
    threads = Thread.list.size
    h = spawn_handle("sleep", "0.1")
    assert_same(h, Process.detach(h))
    assert_predicate(h, :detached?)
    assert_equal(threads, Thread.list.size)
    st = h.wait(5)
    assert_equal(0, st&.exitstatus)

    h2 = spawn_handle("exit 1")
    h2.wait
    assert_same(h2, h2.detach, "already reaped")
    assert_same(h2.status, h2.wait)
    assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
  end

  # --- 11. close -------------------------------------------------------------

  # #close in both modes (without pidfds there is no descriptor, but the
  # handle is closed all the same).
  def test_close
    h = spawn_handle("sleep", "5")
    pid = h.pid
    assert_nil(h.close)
    assert_predicate(h, :closed?)
    assert_nil(h.close, "closing twice does nothing")
    assert_raise(IOError) { h.kill }
    assert_raise(IOError) { h.kill(0) }
    assert_raise(IOError) { h.wait }
    assert_raise(IOError) { h.wait(0) }
    assert_raise(IOError) { h.wait_nonblock }
    assert_raise(IOError) { h.detach }
    assert_raise(IOError) { Process.wait(h) }
    assert_equal(pid, h.pid)
    assert_nil(h.status)
    assert_equal("#<Process::Handle: pid #{pid} running (closed)>", h.inspect)
  ensure
    if h&.closed? && !h.status   # else teardown reaps it through the handle
      Process.kill(:KILL, pid)
      Process.wait(pid)
    end
  end

  def test_close_after_wait
    h = spawn_handle("exit 3")
    st = h.wait
    h.close
    assert_same(st, h.wait)
    assert_same(st, h.wait(0))
    assert_same(st, h.status)
    assert_equal(h.pid, Process.wait(h))
    assert_same(st, $?)
    assert_predicate(h, :exited?)
  end

  def test_close_through_to_io
    omit_unless_pidfd
    h = spawn_handle("exit 0")
    st = h.wait
    h.to_io.close
    assert_predicate(h, :closed?)
    assert_same(st, h.wait)
    assert_match(/\(closed\)>\z/, h.inspect)
  end

  # --- 12. open --------------------------------------------------------------

  def test_open_child
    pid = Process.spawn("exit 6")
    h = track(Process::Handle.open(pid))
    assert_equal(pid, h.pid)
    assert_predicate(h, :race_free?) if Process::Handle.race_free?
    st = h.wait
    assert_equal(6, st.exitstatus)
    assert_raise(Errno::ECHILD) { Process.wait(pid) }
  end

  # A process that is not a child: #alive? must not take waitpid's ECHILD
  # for an exit (without pidfds it once did, and kill(0) then raised ESRCH).
  def test_open_non_child
    h = Process::Handle.open(Process.ppid)
    @opened << h
    assert_equal(Process.ppid, h.pid)
    assert_same(h, h.kill(0))
    assert_predicate(h, :alive?)
    assert_not_predicate(h, :exited?)
    assert_same(h, h.kill(0))
    assert_equal(1, Process.kill(0, h))
    assert_nil(h.status)
  end

  # #wait on a live process that is not a child waits (waitid(P_PIDFD)
  # says ECHILD and PIDFD_GET_INFO has no exit yet: that is "running", not
  # "lost").
  def test_open_non_child_timed_wait
    omit_unless_pidfd
    h = Process::Handle.open(Process.ppid)
    @opened << h
    t = monotonic
    assert_nil(h.wait(0.05), "a running process: timeout")
    assert_operator(monotonic - t, :>=, 0.04)
    assert_predicate(h, :alive?)
    assert_match(/running/, h.inspect)
  end

  # A grandchild's exit is awaited, and its status read once its parent
  # reaped it (PIDFD_GET_INFO, Linux 6.15).
  def test_open_grandchild_wait
    omit_unless_pidfd
    IO.pipe do |r, w|
      sh = Process.spawn("sleep 0.3 & echo $!; wait", out: w)
      w.close
      begin
        h = track(Process::Handle.open(r.gets.to_i))
        assert_predicate(h, :alive?)
        st = h.wait(5)
        assert_not_nil(st)
        assert_equal(0, st.exitstatus)
      ensure
        Process.wait(sh)
      end
    end
  end

  def test_open_invalid
    assert_raise(ArgumentError) { Process::Handle.open(0) }
    assert_raise(ArgumentError) { Process::Handle.open(-1) }
    assert_raise(TypeError) { Process::Handle.open("1") }
    max = (Integer(File.read("/proc/sys/kernel/pid_max")) rescue 2**22)
    pid = (max - 1).downto(max - 100).find {|i| !File.exist?("/proc/#{i}")}
    assert_raise(Errno::ESRCH) { Process::Handle.open(pid) }
    h = spawn_handle("exit 0")
    h.wait
    assert_raise(Errno::ESRCH) { Process::Handle.open(h.pid) } unless File.exist?("/proc/#{h.pid}")
  end

  # --- 13. interrupted waits ---------------------------------------------------

  def test_wait_interrupted_by_timeout
    h = spawn_handle("sleep", "0.4")
    t = monotonic
    assert_raise(Timeout::Error) { Timeout.timeout(0.1) { h.wait } }
    assert_operator(monotonic - t, :<, 0.35)
    assert_nil(h.status)
    assert_predicate(h, :alive?)
    st = h.wait(5)
    assert_equal(0, st&.exitstatus)
    assert_same(st, h.wait)
  end

  def test_wait_interrupted_by_thread_raise_and_kill
    h = spawn_handle("sleep", "0.4")
    th = Thread.new { h.wait }
    th.report_on_exception = false
    Thread.pass until th.stop?
    th.raise(RuntimeError, "interrupted")
    assert_raise_with_message(RuntimeError, "interrupted") { th.join }
    th = Thread.new { h.wait }
    Thread.pass until th.stop?
    th.kill
    th.join
    assert_nil(h.status)
    assert_predicate(h, :alive?)
    st = h.wait(5)
    assert_equal(0, st&.exitstatus)
  end

  # --- 14. GC.compact ----------------------------------------------------------

  def test_gc_compact
    omit "no GC.compact" unless GC.respond_to?(:compact)
    done = spawn_handle("exit 1")
    st = done.wait
    hs = 3.times.map {|i| spawn_handle("sleep 0.1; exit #{i}")}
    200.times.map { Object.new } # garbage around them
    begin
      GC.compact
    rescue NotImplementedError
      omit "GC.compact not implemented"
    end
    assert_same(st, done.status)
    assert_same(st, done.wait)
    hs.each {|h| assert_match(PIDFD_RE, File.readlink("/proc/self/fd/#{h.to_io.fileno}"))} if Process::Handle.race_free?
    hs.each_with_index {|h, i| assert_equal(i, h.wait.exitstatus)}
    GC.compact
    hs.each_with_index {|h, i| assert_equal(i, h.status.exitstatus)}
  end

  # --- 15. waitall -------------------------------------------------------------

  def test_waitall_with_handles
    hs = [spawn_handle("exit 11"), spawn_handle("exit 12")]
    pids = [Process.spawn("exit 13"), Process.spawn("exit 14")]
    hs.each {|h| IO.select([h.to_io], nil, nil, 5)} if Process::Handle.race_free?
    res = Process.waitall.to_h {|pid, st| [pid, st.exitstatus]}
    assert_equal(13, res[pids[0]])
    assert_equal(14, res[pids[1]])
    if Process::Handle.race_free?
      assert_equal([11, 12], hs.map {|h| h.wait.exitstatus})
    else
      hs.each {|h| assert_raise(Errno::ECHILD) { h.wait } if res.key?(h.pid) }
    end
    assert_equal([], Process.waitall)
  end

  # --- hostile input -------------------------------------------------------

  # Process::Handle.spawn takes Process.spawn's arguments, and its mistakes
  # get Process.spawn's exceptions, with no child and no descriptor left.
  def test_spawn_bad_arguments_as_process_spawn
    before = fds
    [
      [],
      [nil],
      [Object.new],
      ["true", {bogus_option: 1}],
      ["true", {chdir: "/nonexistent/dir"}],
      [{"A" => Object.new}, "true"],
      ["true", {in: Object.new}],
      ["true\0x"],
    ].each do |args|
      expected = begin
        pid = Process.spawn(*args)
        Process.wait(pid)
        nil
      rescue Exception => e
        e
      end
      actual = begin
        spawn_handle(*args).wait
        nil
      rescue Exception => e
        e
      end
      assert_equal(expected&.class, actual&.class, "spawn(#{args.inspect})")
      assert_equal(expected&.message, actual&.message, "spawn(#{args.inspect})")
    end
    assert_equal(before, fds)
    assert_raise(Errno::ECHILD) { Process.wait(-1, Process::WNOHANG) }
  end

  def test_bad_arguments_to_methods
    h = spawn_handle("sleep", "5")
    assert_raise(ArgumentError) { h.kill(:BOGUS) }
    assert_raise(ArgumentError) { Process.kill(:BOGUS, h) }
    assert_raise(TypeError) { h.wait("1") }
    assert_raise(ArgumentError) { h.wait(1, 2) }
    assert_raise(TypeError) { Process.wait(h, "x") }
    assert_raise(TypeError) { Process.kill(:TERM, Object.new) }
    assert_raise(TypeError) { Process::Handle.open(nil) }
    assert_raise(RangeError) { Process::Handle.open(2**64) }
    assert_raise(TypeError) { Process::Status.wait(h, "0") }
    assert_predicate(h, :alive?, "nothing above touched the child")
  end

  # Process._fork overrides that switch threads: each Handle.fork gets the
  # pidfd of its own child.
  def test_fork_from_many_threads_through_a_fork_override
    omit_unless_pidfd
    assert_separately([], <<~'end;', timeout: 60)
      module SlowFork
        def _fork
          sleep 0.01
          super
        end
      end
      Process.singleton_class.prepend(SlowFork)
      results = 4.times.map do |i|
        Thread.new do
          5.times.map do |j|
            h = Process::Handle.fork { exit!(i * 10 + j) }
            [h.race_free?, h.wait.exitstatus].tap { h.close }
          end
        end
      end.map(&:value)
      assert_equal(4.times.map { |i| 5.times.map { |j| [true, i * 10 + j] } }, results)
      h = Process::Handle.fork { h2 = Process::Handle.fork { exit!(4) }; exit!(h2.wait.exitstatus + 1) }
      assert_equal(5, h.wait.exitstatus)
      h.close
    end;
  end

  # --- found in review -----------------------------------------------------

  # The fork handshake holds the child until the parent has its pidfd, even
  # when pidfd_open(2) is slow and a thread reaps every child meanwhile
  # (strace delays the call; the pipe the child waits on was once
  # non-blocking, and the child ran straight on).
  def test_fork_handshake_holds_the_child
    omit_unless_pidfd
    strace = ENV["PATH"].split(File::PATH_SEPARATOR).map { |d| File.join(d, "strace") }.find { |f| File.executable?(f) }
    omit "no strace" unless strace
    script = <<~'RUBY'
      keep = Process.spawn("sleep", "3")
      Thread.new { loop { begin; Process.wait(-1); rescue Errno::ECHILD; sleep 0.01; end } }
      sleep 0.2
      h = Process::Handle.fork { exit!(4) }
      io = (h.to_io rescue nil)
      st = (h.wait rescue $!)
      puts [h.race_free?, !io.nil?, st.respond_to?(:exitstatus) ? st.exitstatus : st.class].inspect
      Process.kill(:KILL, keep) rescue nil
    RUBY
    cmd = [strace, "-f", "-qq", "-o", File::NULL, "-e", "trace=pidfd_open", "-e", "inject=pidfd_open:delay_enter=300000",
           EnvUtil.rubybin, *ruby_load_args, "-e", script]
    out = IO.popen(cmd, err: [:child, :out], &:read)
    omit "strace cannot run here: #{out.lines.first}" if out.include?("PTRACE") || out.include?("ptrace")
    assert_equal("[true, true, 4]", out.lines.last&.chomp, out)
  end

  def ruby_load_args
    # The load path of this ruby for a child started without runruby.
    $LOAD_PATH.grep_v(/\A#{Regexp.escape(__dir__)}/).flat_map { |d| ["-I", d] }
  end

  # A process never sees its own exit: a wait on it is ECHILD at once, as
  # Process.wait(Process.pid) is.
  def test_wait_on_self_is_echild
    h = Process::Handle.open(Process.pid)
    @opened << h
    assert_raise(Errno::ECHILD) { Timeout.timeout(5) { h.wait } }
    assert_raise(Errno::ECHILD) { Timeout.timeout(5) { Process.wait(h) } }
    assert_raise(Errno::ECHILD) { h.wait_nonblock }
    assert_equal(-1, Process::Status.wait(h).pid)
    assert_predicate(h, :alive?)
  end

  # Detached handles are reaped when SIGCHLD does not reach Ruby too (a
  # thread then waits, as for Process.detach(pid)): no zombie, no pidfd
  # left once the handles are dropped.
  def test_detach_without_ruby_sigchld_handler
    %w[SYSTEM_DEFAULT IGNORE].each do |disposition|
      assert_separately([], <<~"RUBY", timeout: 30)
        trap(:CHLD, #{disposition.dump})
        fds = Dir.children("/proc/self/fd").size
        5.times { Process::Handle.spawn("sh", "-c", "sleep 0.1").detach }
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
        children = -> { File.read("/proc/self/task/\#{Process.pid}/children").split }
        sleep 0.05 until (children.().empty? && (GC.start; Dir.children("/proc/self/fd").size) <= fds) ||
                         Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        assert_equal([], children.(), "zombies (#{disposition})")
        assert_equal(fds, Dir.children("/proc/self/fd").size, "pidfds left (#{disposition})")
      RUBY
    end
  end

  # Thread#kill after the fork, before Handle.fork returns (here inside a
  # Process._fork override): the pidfd nobody will get is closed.
  def test_fork_unwound_by_thread_kill_leaves_no_pidfd
    omit_unless_pidfd
    assert_separately([], <<~'RUBY', timeout: 30)
      module Slow
        def _fork
          pid = super
          sleep 5 if pid > 0
          pid
        end
      end
      Process.singleton_class.prepend(Slow)
      before = Dir.children("/proc/self/fd").size
      t = Thread.new { Process::Handle.fork { exit!(0) } }
      sleep 0.5
      t.kill
      t.join
      Process.wait
      assert_equal(before, Dir.children("/proc/self/fd").size)
    RUBY
  end

  # Out of descriptors: a GC frees some first, as for IO.pipe.
  def test_fork_and_spawn_when_descriptors_run_out
    assert_separately([], <<~'RUBY', timeout: 30)
      Process.setrlimit(:NOFILE, 64)
      # Fills the descriptor table with Files that are garbage at once.
      fill = -> do
        files = []
        begin
          loop { files << File.open(File::NULL) }
        rescue Errno::EMFILE
        end
        files.clear
      end
      fill.()
      h = Process::Handle.fork { exit!(3) }
      assert_equal(3, h.wait.exitstatus)
      h.close
      fill.()
      h = Process::Handle.spawn("true")
      assert_predicate(h.wait, :success?)
      h.close
    RUBY
  end
end
