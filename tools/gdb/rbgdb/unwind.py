# C stacks of suspended fibers (amd64 coroutine only).
#
# coroutine/amd64/Context.S, coroutine_transfer: pushes rbp, rbx, r12-r15
# and keeps rsp in the fiber's context.stack_pointer, so from that address
# the words are r15, r14, r13, r12, rbx, rbp, then the return address; the
# caller's rsp is 7 words up.  An unwinder armed with such a stack pointer
# answers for the selected thread's innermost physical frame with these
# registers: gdb then walks the fiber's stack from the frame that switched
# away.

import gdb

try:
    from gdb.unwinder import Unwinder
except ImportError:             # gdb without Python unwinders
    Unwinder = object

from .values import u64

SAVED = ("r15", "r14", "r13", "r12", "rbx", "rbp")


class _FrameId:
    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


class FiberUnwinder(Unwinder):
    def __init__(self):
        super().__init__("ruby-fiber")
        self.stack_pointer = None
        self.level = None
        self.answered = False

    def __call__(self, pending):
        # The innermost frame gdb unwinds by a sniffer (level 0, or 1 when
        # frame 0 is inlined) is the first asked for after arming.
        if self.stack_pointer is None:
            return None
        if self.level is None:
            self.level = pending.level()
        elif pending.level() != self.level:
            return None
        sp = self.stack_pointer
        # This frame's id takes the fiber's stack pointer: gdb stops where a
        # caller looks inner to (below) its callee, which the fiber's stack
        # would, below the thread's.
        ulong = gdb.lookup_type("unsigned long")
        info = pending.create_unwind_info(
            _FrameId(gdb.Value(sp).cast(ulong), pending.read_register("rip")))
        for i, reg in enumerate(SAVED):
            info.add_saved_register(reg, gdb.Value(u64(sp + 8 * i)).cast(ulong))
        info.add_saved_register("rip", gdb.Value(u64(sp + 48)).cast(ulong))
        info.add_saved_register("rsp", gdb.Value(sp + 56).cast(ulong))
        self.answered = True
        return info


_unwinder = None


def supported():
    """Whether this ruby switches fibers with the amd64 coroutine."""
    try:
        addr = int(gdb.parse_and_eval("(unsigned long)&coroutine_transfer"))
    except gdb.error:
        return False
    symtab = gdb.find_pc_line(addr).symtab
    if symtab is not None:
        return "amd64" in symtab.filename
    # no line info: trust the architecture
    return "x86-64" in gdb.selected_inferior().architecture().name()


def c_stack(stack_pointer, limit=40):
    """Frames of a suspended fiber's C stack: (function, file:line) pairs."""
    global _unwinder
    if _unwinder is None:
        _unwinder = FiberUnwinder()
        gdb.unwinder.register_unwinder(None, _unwinder, replace=True)
    _unwinder.stack_pointer = stack_pointer
    _unwinder.level = None
    _unwinder.answered = False
    gdb.invalidate_cached_frames()
    out = []
    try:
        frame = gdb.newest_frame()
        frame.older()
        if not _unwinder.answered:
            return [("<the fiber's stack could not be unwound>", "")]
        # the thread's own innermost frames, up to the one answered for
        while frame is not None and (_unwinder.level is None or frame.level() <= _unwinder.level):
            frame = frame.older()
        while frame is not None and len(out) < limit and frame.pc() != 0:
            name = frame.name() or "??"
            sal = frame.find_sal()
            where = "%s:%d" % (sal.symtab.filename, sal.line) if sal.symtab else "0x%x" % frame.pc()
            out.append((name, where))
            frame = frame.older()
    except gdb.error as e:
        out.append(("<stopped: %s>" % e, ""))
    finally:
        _unwinder.stack_pointer = None
        _unwinder.level = None
        gdb.invalidate_cached_frames()
    return out
