# frozen_string_literal: false
require 'mkmf'

# IO::Uring::Scheduler is built only into a ruby configured with io_uring
# (liburing 2.9 or later found, no --disable-io-uring).
$INCFLAGS << " #{RbConfig::CONFIG['incflags']}"
if RUBY_PLATFORM.include?("linux") &&
   have_macro("USE_IO_URING", "ruby.h") && try_compile("#if !USE_IO_URING\n#error\n#endif") &&
   have_header("liburing.h") &&
   have_library("uring", "io_uring_queue_init_params", "liburing.h") &&
   have_func("io_uring_prep_waitid", "liburing.h")
  have_header("sys/eventfd.h")
  # liburing is linked statically: keep its symbols out of the extension's
  # exports, where Init_uring is the only one.
  exclude = " -Wl,--exclude-libs,ALL"
  $DLDFLAGS << exclude if try_link("int main(void) { return 0; }", exclude)
  create_makefile("io/uring")
end
