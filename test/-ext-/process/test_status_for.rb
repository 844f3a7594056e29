# frozen_string_literal: false
require 'test/unit'
require '-test-/process'

# rb_process_status_for(): the Process::Status a scheduler's #process_wait
# builds from a wait it did itself must equal the one core builds.
class Test_ProcessStatusFor < Test::Unit::TestCase
  def core_status(code)
    pid = Process.spawn(RbConfig.ruby, "-e", code)
    Process::Status.wait(pid)
  end

  def test_same_as_core_for_an_exit
    core = core_status("exit 3")
    built = Bug::Process.status_for(core.pid, core.to_i, 0)
    assert_instance_of(Process::Status, built)
    assert_equal(core.pid, built.pid)
    assert_equal(3, built.exitstatus)
    assert_predicate(built, :exited?)
    assert_equal(core.to_i, built.to_i)
    assert_equal(core.inspect, built.inspect)
    assert_equal(core, built)
    assert_predicate(built, :frozen?)
  end

  def test_same_as_core_for_a_signal
    core = core_status("Process.kill(:KILL, $$)")
    built = Bug::Process.status_for(core.pid, core.to_i, 0)
    assert_predicate(built, :signaled?)
    assert_equal(Signal.list["KILL"], built.termsig)
    assert_equal(core.inspect, built.inspect)
  end

  def test_raw_wait_status_not_an_exit_code
    # 3 << 8 is "exit 3"; a bare 3 would be "killed by SIGQUIT".
    assert_equal(3, Bug::Process.status_for(1234, 3 << 8, 0).exitstatus)
    assert_equal(3, Bug::Process.status_for(1234, 3, 0).termsig)
  end

  def test_error_as_core_reports_no_child
    core = Process::Status.wait(-1) # no child here: pid -1, ECHILD
    built = Bug::Process.status_for(-1, 0, Errno::ECHILD::Errno)
    assert_equal(-1, core.pid)
    assert_equal(core.pid, built.pid)
    assert_equal(core.inspect, built.inspect)
  end
end
