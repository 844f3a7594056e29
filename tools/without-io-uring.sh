#!/bin/bash
# Run a command with io_uring refused by the kernel.
#
# As root, set kernel.io_uring_disabled=2 for the duration of the command and
# restore the old value afterwards (also on failure or interrupt).  Without
# the privilege, set RUBY_IO_URING=0, which makes IO::Uring::Scheduler.new
# fail with EPERM as if io_uring_setup(2) had.
set -uo pipefail
ctl=/proc/sys/kernel/io_uring_disabled
if [ -w "$ctl" ] && old=$(cat "$ctl") && echo 2 2>/dev/null > "$ctl"; then
    trap 'echo "$old" > "$ctl"' EXIT
    trap 'exit 130' INT TERM
    echo "without-io-uring: kernel.io_uring_disabled=2 for this run (was $old)"
    "$@"
    exit $?
fi
echo "without-io-uring: cannot change $ctl; using RUBY_IO_URING=0"
RUBY_IO_URING=0 exec "$@"
