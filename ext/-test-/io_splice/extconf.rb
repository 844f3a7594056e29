# frozen_string_literal: false
# internal/io_splice.h
$INCFLAGS << " -I$(top_srcdir)"
create_makefile("-test-/io_splice")
