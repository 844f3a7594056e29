# frozen_string_literal: false
require 'test/unit'

# CRuby's own fiber scheduler suite (test/fiber), run again with every hook
# of its Scheduler handed to IO::Uring::Scheduler (see uring_substitute.rb).
class TestIOUringFiberSuite < Test::Unit::TestCase
  SUBSTITUTE = File.expand_path("uring_substitute.rb", __dir__)
  EXCLUDES = File.expand_path("fiber_suite_excludes", __dir__)
  RUNNER = File.expand_path("../../runner.rb", __dir__)
  SUITE = File.expand_path("../../fiber", __dir__)

  def setup
    require "io/uring"
  rescue LoadError
    omit "ruby was built without io_uring"
  end

  def test_fiber_suite_on_io_uring_scheduler
    omit "the kernel refuses io_uring here" unless io_uring_usable?
    # RUBYOPT also reaches the suite's own subprocesses (assert_separately).
    env = {"RUBYOPT" => [ENV["RUBYOPT"], "-r#{SUBSTITUTE}"].compact.join(" ")}
    out, err, status = EnvUtil.invoke_ruby(
      [env, RUNNER, "--excludes-dir=#{EXCLUDES}", SUITE],
      "", true, true, timeout: 600)
    summary = out[/^(\d+) tests, \d+ assertions, (\d+) failures, (\d+) errors, \d+ skips$/]
    assert summary, "no test summary:\n#{out}\n#{err}"
    tests, failures, errors = $1.to_i, $2.to_i, $3.to_i
    assert_operator tests, :>=, 80, "the fiber suite should have run"
    assert_equal [0, 0], [failures, errors], "#{out}\n#{err}"
    assert_predicate status, :success?
  end

  private

  def io_uring_usable?
    IO::Uring::Scheduler.new.close
    true
  rescue SystemCallError
    false
  end
end
