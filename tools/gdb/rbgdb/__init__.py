# Python package of tools/gdb/ruby_uring.py.
