# frozen_string_literal: false
#
# Shared by the IO::Uring::Scheduler tests: skip where there is no
# io_uring, and check that every test leaves the descriptors as it found
# them.
module IOUringTestHelper
  def setup
    require "io/uring"
    begin
      IO::Uring::Scheduler.new.close
    rescue SystemCallError => e
      omit "the kernel refuses io_uring here (#{e.class})"
    end
    @fds = open_fds
  rescue LoadError
    omit "ruby was built without io_uring"
  end

  def teardown
    return unless @fds
    GC.start
    assert_equal [], open_fds - @fds, "descriptors leaked"
  end

  def open_fds
    Dir.children("/proc/self/fd").map(&:to_i).sort
  end
end
