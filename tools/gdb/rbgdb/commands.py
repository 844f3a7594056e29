# The gdb commands.  Each reads memory only: no function of the process is
# called, nothing is written, so they work the same on a core file.

import gdb

from . import fds, unwind, uring, values, vm
from .values import Unreadable, const, describe


def _args(arg, flags):
    words = gdb.string_to_argv(arg)
    opts = {f: False for f in flags}
    rest = []
    for w in words:
        if w in flags:
            opts[w] = True
        elif w.startswith("-"):
            raise gdb.GdbError("unknown option %s (known: %s)" % (w, " ".join(flags)))
        else:
            rest.append(w)
    return opts, " ".join(rest)


def _reading(invoke):
    """Run a command with calls into the process forbidden (an argument such
    as `ruby bt rb_fiber_current()` must not run code either), reporting
    what goes wrong as a gdb error, not a Python traceback."""
    def wrapper(self, arg, from_tty):
        may_call = gdb.parameter("may-call-functions")
        gdb.execute("set may-call-functions off", to_string=True)
        try:
            return invoke(self, arg, from_tty)
        except Unreadable as e:
            raise gdb.GdbError("%s: cannot read the process's memory at %s" % (self.name, e))
        except gdb.GdbError:
            raise
        except (gdb.error, ValueError, KeyError) as e:    # gdb.MemoryError too
            raise gdb.GdbError("%s: %s" % (self.name, e))
        finally:
            gdb.execute("set may-call-functions %s" % ("on" if may_call else "off"), to_string=True)
    wrapper.__doc__ = invoke.__doc__
    return wrapper


def _emit(line):
    gdb.write(line + "\n")


def _scheduler_text(t):
    sch = t.scheduler
    if sch == const("RUBY_Qnil"):
        return "nil"
    if uring.scheduler_of(sch):
        return "IO::Uring::Scheduler 0x%x" % sch
    return "%s 0x%x" % (uring.other_scheduler_name(sch), sch)


def _c_stack_lines(f, indent):
    if f.status != "SUSPENDED":
        if f.status == "RESUMED" and f.thread is not None:
            if not f.thread.tid:
                return [indent + "C: running, its thread off any native thread (M:N)"]
            return [indent + "C: running: the stack of LWP %d (gdb: thread find %d, bt)"
                    % (f.thread.tid, f.thread.tid)]
        return [indent + "C: no stack (%s)" % f.status]
    if not unwind.supported():
        return [indent + "C: not on this architecture or coroutine (amd64 only)"]
    return [indent + "C: %s at %s" % fr for fr in unwind.c_stack(f.stack_pointer())]


def _fiber_block(f, head, opts, indent="    "):
    _emit(head)
    if opts.get("-bt"):
        for line in vm.ruby_backtrace_lines(f.ec, indent):
            _emit(line)
    if opts.get("-c"):
        for line in _c_stack_lines(f, indent):
            _emit(line)


class _Command(gdb.Command):
    """A command that knows its name (for its error messages)."""

    def __init__(self, name, category):
        super().__init__(name, category)
        self.name = name


class RubyPrefix(gdb.Command):
    """Ruby's threads, fibers, backtraces and descriptor users, from memory.

Subcommands: ruby threads, ruby bt, ruby fibers, ruby fd-users.
They never call into the process: they work on a live ruby and on a core."""

    def __init__(self):
        super().__init__("ruby", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)


class RubyThreads(_Command):
    """Every Ruby thread: its native thread, current fiber and Fiber.scheduler.

Usage: ruby threads [-bt]
  -bt   also the current fiber's Ruby backtrace"""

    def __init__(self):
        super().__init__("ruby threads", gdb.COMMAND_DATA)

    @_reading
    def invoke(self, arg, from_tty):
        opts, _ = _args(arg, ("-bt",))
        for t in vm.threads():
            try:
                if not t.ec:
                    _emit("%s self=0x%x status=%s (no execution context: ending)"
                          % (t.label(), t.self, t.status()))
                    continue
                f = vm.Fiber(t.current_fiber, t)
                fib = "0x%x" % f.value if f.value else "root"
                name = t.name
                _emit("%s lwp=%d self=0x%x status=%s%s fiber=%s scheduler=%s"
                      % (t.label(), t.tid, t.self, t.status(),
                         ' name="%s"' % name if name else "", fib, _scheduler_text(t)))
                if opts["-bt"]:
                    for line in vm.ruby_backtrace_lines(f.ec):
                        _emit(line)
            except (Unreadable, gdb.MemoryError) as e:
                _emit("%s <unreadable %s>" % (t.label(), e))


class RubyBt(_Command):
    """A Ruby backtrace with current line numbers.

Usage: ruby bt [-c] [thread N | FIBER]
  no argument  the Ruby thread of gdb's selected thread (else thread 1)
  thread N     the current fiber of thread N of `ruby threads`
  FIBER        a Fiber (VALUE) or an rb_fiber_t pointer, as an expression
  -c           also the fiber's C stack (suspended fibers: amd64 only)"""

    def __init__(self):
        super().__init__("ruby bt", gdb.COMMAND_STACK)

    @_reading
    def invoke(self, arg, from_tty):
        opts, rest = _args(arg, ("-c",))
        threads = vm.threads()
        words = rest.split()
        if not words:
            lwp = gdb.selected_thread().ptid[1] if gdb.selected_thread() else 0
            t = next((t for t in threads if t.tid == lwp), threads[0] if threads else None)
            if t is None or not t.ec:
                raise gdb.GdbError("no Ruby thread here")
            f = vm.Fiber(t.current_fiber, t)
        elif words[0] == "thread":
            n = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            t = next((t for t in threads if t.number == n), None)
            if t is None or not t.ec:
                raise gdb.GdbError("no Ruby thread %s (see `ruby threads`)" % n)
            f = vm.Fiber(t.current_fiber, t)
        else:
            v = int(gdb.parse_and_eval(rest))
            f = vm.fiber(v)
            if f is None:
                raise gdb.GdbError("0x%x is not a fiber" % v)
            cur = next((t for t in threads if t.current_fiber == f.addr), None)
            f.thread = cur
        _fiber_block(f, "%s %s" % (f.label(), f.status), {"-bt": True, "-c": opts["-c"]})


class RubyFibers(_Command):
    """Every fiber of each scheduler, found through the scheduler's own
structures, with what it waits for.

Usage: ruby fibers [-bt] [-c] [SCHEDULER]
  SCHEDULER  a scheduler VALUE (default: those set on any thread)
  -bt        each fiber's Ruby backtrace
  -c         each suspended fiber's C stack (amd64 only)

IO::Uring::Scheduler: its operations in flight, fibers in I/O hooks, the
run queue, held raises, blocked fibers and its loop fiber.  Other
schedulers keep their fibers in Ruby objects: only each thread's current
fiber is shown."""

    def __init__(self):
        super().__init__("ruby fibers", gdb.COMMAND_DATA)

    @_reading
    def invoke(self, arg, from_tty):
        opts, rest = _args(arg, ("-bt", "-c"))
        if rest:
            targets = [(s.thread, s) for s in uring.scheduler_arg(rest)]
        else:
            targets = []
            seen = set()
            for t in vm.threads():
                if t.scheduler == const("RUBY_Qnil") or t.scheduler in seen:
                    continue
                seen.add(t.scheduler)
                targets.append((t, uring.scheduler_of(t.scheduler, t)))
        for t, s in targets:
            owner = t.label() if t else "no thread"
            if s is None:
                _emit("%s: scheduler %s: fibers not enumerable (a Ruby-level scheduler)"
                      % (owner, _scheduler_text(t)))
                if not t.ec:
                    continue
                f = vm.Fiber(t.current_fiber, t)
                _fiber_block(f, "  %s %s: running (current fiber)" % (f.label(), f.status), opts)
                continue
            try:
                roles = s.fibers()
            except (Unreadable, gdb.MemoryError) as e:
                _emit("%s: %s <unreadable %s>" % (owner, s.label(), e))
                continue
            _emit("%s: %s fibers=%d" % (owner, s.label(), len(roles)))
            for fv, what in roles.items():
                f = vm.fiber(fv, t)
                if f is None:
                    _emit("  0x%x: not a fiber: %s" % (fv, "; ".join(what)))
                    continue
                _fiber_block(f, "  %s %s: %s" % (f.label(), f.status, "; ".join(what)), opts)


class RubyFdUsers(_Command):
    """Threads and fibers using descriptors, and IO#close calls waiting
for them (the series' closing state).

Usage: ruby fd-users [FD]"""

    def __init__(self):
        super().__init__("ruby fd-users", gdb.COMMAND_DATA)

    @staticmethod
    def _user_text(u):
        who = u["thread"].label() if u["thread"] else "thread 0x%x" % u["th"]
        if u["kind"] == "thread":
            text = "%s blocking call" % who
        else:
            text = "fiber 0x%x of %s in a scheduler hook" % (u["fiber"], who)
        if u["interrupted"]:
            text += " interrupted"
        return text

    @_reading
    def invoke(self, arg, from_tty):
        want = int(gdb.parse_and_eval(arg)) if arg.strip() else None
        for u in fds.users():
            if want is None or u["fd"] == want:
                _emit("fd %d: %s" % (u["fd"], self._user_text(u)))
        closes = fds.closes()
        if closes is None:
            _emit("(this ruby does not record closes in progress: vm->closing_fds is missing)")
            return
        for c in closes:
            if want is not None and c["fd"] != want:
                continue
            closer = c["thread"].label() if c["thread"] else describe(c["closing_thread"])
            if c["closing_fiber"] != const("RUBY_Qnil"):
                closer += " fiber 0x%x" % c["closing_fiber"]
            _emit("closing fd %d: IO#close by %s waits for %d user(s)"
                  % (c["fd"], closer, len(c["users"])))
            for u in c["users"]:
                _emit("  %s" % self._user_text(u))
            if c.get("error"):
                _emit("  <unreadable %s>" % c["error"])


class UringPrefix(gdb.Command):
    """IO::Uring::Scheduler's rings, operations and queues, from memory.

Subcommands: uring ring, uring ops, uring state."""

    def __init__(self):
        super().__init__("uring", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)


def _each(rest):
    ss = uring.scheduler_arg(rest)
    if not ss:
        _emit("no IO::Uring::Scheduler is set on any thread")
    for s in ss:
        owner = s.thread.label() if s.thread else "no thread"
        yield owner, s


class UringRing(_Command):
    """The ring of each IO::Uring::Scheduler: descriptor, setup flags, the
submission and completion queues' heads, tails and overflow.

Usage: uring ring [SCHEDULER]"""

    def __init__(self):
        super().__init__("uring ring", gdb.COMMAND_DATA)

    @_reading
    def invoke(self, arg, from_tty):
        for owner, s in _each(arg):
            r = s.ring()
            _emit("%s: %s ring fd=%d flags=%s entries sq=%d cq=%d in-flight=%d"
                  % (owner, s.label(), r["fd"], uring.flag_names(r["flags"]),
                     r["sq_entries"], r["cq_entries"], int(s.s["inflight"])))
            _emit("  sq local head=%d tail=%d queued=%d"
                  % (r["sqe_head"], r["sqe_tail"], (r["sqe_tail"] - r["sqe_head"]) & 0xffffffff))
            if "missing" in r:
                _emit("  %s" % r["missing"])
                continue
            _emit("  sq head=%d tail=%d dropped=%d flags=0x%x"
                  % (r["sq_head"], r["sq_tail"], r["sq_dropped"], r["sq_flags"]))
            _emit("  cq head=%d tail=%d ready=%d overflow=%d"
                  % (r["cq_head"], r["cq_tail"], (r["cq_tail"] - r["cq_head"]) & 0xffffffff,
                     r["cq_overflow"]))
            if r["flags"] & (1 << 13):
                _emit("  (DEFER_TASKRUN: completions reach the queue when the thread enters the kernel)")


class UringOps(_Command):
    """Each operation in flight: opcode, descriptor, deadline, the waiting
fiber and the hook it serves.

Usage: uring ops [SCHEDULER]"""

    def __init__(self):
        super().__init__("uring ops", gdb.COMMAND_DATA)

    @_reading
    def invoke(self, arg, from_tty):
        for owner, s in _each(arg):
            ops = s.ops()
            _emit("%s: %s ops=%d" % (owner, s.label(), len(ops)))
            for op in ops:
                if op.get("role"):
                    _emit("  op 0x%x %s fd=%d: %s" % (op["addr"], uring.opcode_name(op["opcode"]),
                                                     op["fd"], op["role"]))
                    continue
                _emit("  op 0x%x fiber=0x%x %s" % (op["addr"], op["fiber"], uring.describe_op(op)))


class UringState(_Command):
    """The rest of an IO::Uring::Scheduler: loop fiber, run queue, held
raises, blocked fibers, fibers in hooks, the splice pipe pool, registered
buffers and the provided-buffer pool.

Usage: uring state [SCHEDULER]"""

    def __init__(self):
        super().__init__("uring state", gdb.COMMAND_DATA)

    @_reading
    def invoke(self, arg, from_tty):
        nil = const("RUBY_Qnil")
        for owner, s in _each(arg):
            st = s.s
            _emit("%s: %s thread=0x%x loop_fiber=%s closed=%d draining=%d generation=%s"
                  % (owner, s.label(), int(st["thread"]),
                     "0x%x" % int(st["loop_fiber"]) if int(st["loop_fiber"]) != nil else "nil",
                     int(st["closed"]), int(st["draining"]), s.generation_state()))
            ready = s.ready()
            _emit("  ready %d:%s" % (len(ready), "".join(
                " 0x%x%s" % (e["fiber"], "(raise %s)" % describe(e["klass"]) if e["klass"] != nil else "")
                for e in ready)))
            held = s.held()
            _emit("  held raises %d:%s" % (len(held), "".join(
                " 0x%x(%s)" % (e["fiber"], describe(e["klass"])) for e in held)))
            blocked = s.blocked()
            _emit("  blocked %d:%s" % (len(blocked), "".join(
                " 0x%x%s" % (b["fiber"], " until %s" % uring.format_deadline(b["deadline"])
                             if b["deadline"] else "") for b in blocked)))
            woken = s.woken()
            _emit("  woken before blocking %d:%s" % (len(woken), "".join(" 0x%x" % f for f in woken)))
            hooks = s.hooks()
            _emit("  hooks %d:" % len(hooks))
            for h in hooks:
                _emit("    %s fd=%d fiber=0x%x ops=%d%s" % (
                    h["name"], h["fd"], h["fiber"], h["nops"],
                    " interrupt=%s" % describe(h["interrupt"]) if h["interrupt"] != nil else ""))
            pipes = s.pipes()
            _emit("  splice pipes %d:%s" % (len(pipes), "".join(
                " (%d,%d %s %dKiB)" % (p["r"], p["w"], "busy" if p["busy"] else "idle",
                                       p["capacity"] // 1024) for p in pipes)))
            fixed = s.fixed()
            state = int(st["fixed_state"])
            _emit("  registered buffers %d (table: %s) ops=%d refusals=%d" % (
                len(fixed), "none" if state == 0 else "yes" if state < 0 else "refused, errno %d" % state,
                int(st["fixed_ops"]), int(st["fixed_refusals"])))
            for b in fixed:
                _emit("    slot %d %s base=0x%x size=%d" % (b["slot"], describe(b["buffer"]),
                                                          b["base"], b["size"]))
            p = s.pbuf()
            if p:
                _emit("  read pool: %d buffers of %d bytes%s, reads=%d fallbacks=%d" % (
                    p["count"], p["size"], " (incremental)" if p["incremental"] else "",
                    p["reads"], p["fallbacks"]))


def register():
    RubyPrefix()
    RubyThreads()
    RubyBt()
    RubyFibers()
    RubyFdUsers()
    UringPrefix()
    UringRing()
    UringOps()
    UringState()
