# frozen_string_literal: true
#
# Loaded before CRuby's fiber suite (test/fiber) to run it against
# IO::Uring::Scheduler: the hooks of the suite's Scheduler (and of its
# subclasses, unless they define the hook themselves) are handed to an
# IO::Uring::Scheduler made alongside it.  See test_fiber_suite.rb.
require "io/uring"

module IOUringSubstitute
  HOOKS = %i[
    run io_wait io_read io_write io_pread io_pwrite io_select
    kernel_sleep block unblock timeout_after process_wait
    address_resolve blocking_operation_wait fiber io_close fiber_interrupt
    io_splice
  ].freeze

  def initialize(...)
    super
    @uring = IO::Uring::Scheduler.new
  end

  HOOKS.each do |hook|
    define_method(hook) { |*args, **kw, &block| @uring.__send__(hook, *args, **kw, &block) }
  end

  # Scheduler#close runs the loop (ours), then releases its own resources.
  def close(...)
    super
  ensure
    @uring.close unless @uring.closed?
  end
end

# test/fiber/scheduler.rb reopens this class; the prepended module stays in
# front of the methods it defines there.
class Scheduler
  prepend IOUringSubstitute
end
