# make test-asan only.  As nobody, Process::Handle.spawn's child starts on
# a small stack of the parent's (vfork-like), where ASan's
# __asan_handle_no_return prints a warning about the stack's bounds on
# stderr, and the test wants stderr empty.  make test runs it unexcluded.
exclude(:test_vfork_like_path_without_privilege, "ASan writes a warning on the child's stderr")
