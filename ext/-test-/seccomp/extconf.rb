# frozen_string_literal: false
if have_header("linux/seccomp.h") && have_header("linux/filter.h") && have_header("sys/prctl.h")
  create_makefile("-test-/seccomp")
end
