# frozen_string_literal: false
# internal/io_uring.h, and liburing's headers where configure found them.
$INCFLAGS << " -I$(top_srcdir) #{RbConfig::CONFIG['incflags']}"
create_makefile("-test-/io_uring")
