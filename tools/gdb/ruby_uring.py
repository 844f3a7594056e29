# gdb commands for a ruby built from this series: threads, fibers and their
# Fiber.scheduler, Ruby backtraces with current line numbers, descriptor
# users and closes in progress, and IO::Uring::Scheduler's ring.
#
#   (gdb) source /path/to/tools/gdb/ruby_uring.py
#   (gdb) help ruby
#   (gdb) help uring
#
# Every command reads memory only (no inferior calls), so it works on a
# live process and on a core file.  README.md, "Debugging with gdb".

import os
import sys

import gdb

_here = os.path.dirname(os.path.abspath(os.path.expanduser(__file__)))
if _here not in sys.path:
    sys.path.insert(0, _here)

from rbgdb import commands, uring, values   # noqa: E402


def _forget(event):
    values.reset()
    uring.reset()


if not getattr(gdb, "_ruby_uring_registered", False):
    commands.register()
    gdb.events.new_objfile.connect(_forget)
    gdb._ruby_uring_registered = True
