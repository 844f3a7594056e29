# frozen_string_literal: false
require 'mkmf'

# IO::Uring::Scheduler needs Linux and liburing 2.9 or later
# (io_uring_prep_waitid).  configure's --with-liburing-dir=DIR (or
# --with-liburing-include/-lib) names a liburing installation, as for any
# extension's library; --without-liburing leaves the extension out.  A
# static liburing.a built with -fPIC is linked into the extension.
if RUBY_PLATFORM.include?("linux") && with_config("liburing", true)
  dir_config("liburing")
  if have_header("liburing.h") &&
     have_library("uring", "io_uring_queue_init_params", "liburing.h") &&
     have_func("io_uring_prep_waitid", "liburing.h")
    have_header("sys/eventfd.h")
    # A ruby with the series' patch 8: #read_pooled registers with IO#close.
    have_func("rb_fiber_scheduler_io_operation", "ruby/fiber/scheduler.h")
    # A ruby with patch 9 (or master): #process_wait builds statuses of
    # children it reaped through a pidfd.
    have_func("rb_process_status_for", "ruby.h")
    # A ruby with patch 13: received and sent bytes survive an interrupt
    # for callers that keep them (the TLS transport).
    have_func("rb_fiber_scheduler_transfer_call", "ruby/fiber/scheduler.h")
    # Keep liburing's symbols out of the extension's exports, where
    # Init_uring is the only one.
    exclude = " -Wl,--exclude-libs,ALL"
    $DLDFLAGS << exclude if try_link("int main(void) { return 0; }", exclude)
    create_makefile("io/uring")
  end
end
