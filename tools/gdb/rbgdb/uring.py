# IO::Uring::Scheduler from memory: its ring, its operations in flight and
# every fiber it knows (ext/io/uring/uring.h, struct uring_scheduler).
#
# The ring's queues are a shared mapping of the kernel's: in a core file
# only when bit 3 of /proc/PID/coredump_filter was set (README).  A kernel
# core without it reads them as zeros, which the entry counts give away.

import time

import gdb

from . import vm
from .values import (T, Unreadable, class_name, const, describe, function_name,
                     has_type, ptr, special_p, typed_data, u32, u64)

WRAP_NAME = "IO::Uring::Scheduler"

SETUP_FLAGS = (
    "IOPOLL", "SQPOLL", "SQ_AFF", "CQSIZE", "CLAMP", "ATTACH_WQ", "R_DISABLED",
    "SUBMIT_ALL", "COOP_TASKRUN", "TASKRUN_FLAG", "SQE128", "CQE32",
    "SINGLE_ISSUER", "DEFER_TASKRUN", "NO_MMAP", "REGISTERED_FD_ONLY",
    "NO_SQARRAY", "HYBRID_IOPOLL",
)

_opnames = {}


def reset():
    _opnames.clear()


def opcode_name(op):
    """IORING_OP_* name of an opcode, from the debug info's enum."""
    if not _opnames:
        try:
            for f in gdb.lookup_type("enum io_uring_op").fields():
                _opnames[f.enumval] = f.name.replace("IORING_OP_", "")
        except gdb.error:
            pass
    return _opnames.get(op, str(op))


LIST_LIMIT = 1 << 20


def _walk(head, first, next_of):
    """Addresses on one of the scheduler's circular lists (not the head)."""
    out, seen = [], set()
    node = first
    while node != head:
        if not node or node in seen or len(out) >= LIST_LIMIT:
            raise Unreadable("list at 0x%x (torn)" % head)
        seen.add(node)
        out.append(node)
        node = next_of(node)
    return out


def _count(n, capa=None):
    if n < 0 or n > LIST_LIMIT or (capa is not None and n > capa):
        raise Unreadable("a count of %d (inconsistent)" % n)
    return n


def flag_names(flags):
    names = [n for i, n in enumerate(SETUP_FLAGS) if flags & (1 << i)]
    rest = flags & ~((1 << len(SETUP_FLAGS)) - 1)
    if rest:
        names.append("0x%x" % rest)
    return "|".join(names) or "0"


def live():
    """Whether the inferior is a running process (not a core file)."""
    inf = gdb.selected_inferior()
    conn = getattr(inf, "connection", None)
    if conn is not None:
        return conn.type != "core"
    return inf.pid != 0 and "core" not in gdb.execute("info target", to_string=True)


def format_deadline(ts_addr):
    """A CLOCK_MONOTONIC __kernel_timespec: absolute, and what is left when live."""
    if not ts_addr:
        return None
    sec = u64(ts_addr)
    nsec = u64(ts_addr + 8)
    at = sec + nsec / 1e9
    if live():
        left = at - time.clock_gettime(time.CLOCK_MONOTONIC)
        return "%.3f (in %.3fs)" % (at, left)
    return "%.3f" % at


class Scheduler:
    def __init__(self, value, data, thread=None):
        self.value = value
        self.data = data
        self.thread = thread
        self.s = ptr(data, "struct uring_scheduler")

    def label(self):
        return "IO::Uring::Scheduler 0x%x" % self.value

    # --- the ring ---------------------------------------------------------

    def ring(self):
        """dict of the ring's state; 'missing' when the queues are not readable."""
        ring = self.s["ring"]
        sq, cq = ring["sq"], ring["cq"]
        out = {"fd": int(ring["ring_fd"]), "flags": int(ring["flags"]),
               "features": int(ring["features"]), "live": int(self.s["ring_live"]),
               "sq_entries": int(sq["ring_entries"]), "cq_entries": int(cq["ring_entries"]),
               "sqe_head": int(sq["sqe_head"]), "sqe_tail": int(sq["sqe_tail"])}
        if not out["live"] or not int(sq["khead"]):
            out["missing"] = "no ring (closed, or never set up)"
            return out
        try:
            if u32(int(sq["kring_entries"])) != out["sq_entries"] or \
                    u32(int(cq["kring_entries"])) != out["cq_entries"]:
                raise Unreadable("zeros")
            out.update(sq_head=u32(int(sq["khead"])), sq_tail=u32(int(sq["ktail"])),
                       sq_dropped=u32(int(sq["kdropped"])), sq_flags=u32(int(sq["kflags"])),
                       cq_head=u32(int(cq["khead"])), cq_tail=u32(int(cq["ktail"])),
                       cq_overflow=u32(int(cq["koverflow"])))
        except Unreadable:
            if live():
                out["missing"] = "ring memory unreadable in this process (/proc/PID/mem)"
            else:
                out["missing"] = ("ring memory not in this core (set bit 3 of "
                                  "/proc/PID/coredump_filter before dumping)")
        return out

    def queued_sqe(self, op_addr):
        """(opcode, fd) of op's submission entry when it is queued, not yet submitted."""
        sq = self.s["ring"]["sq"]
        head, tail, mask = int(sq["sqe_head"]), int(sq["sqe_tail"]), int(sq["ring_mask"])
        sqes = int(sq["sqes"])
        size = T("struct io_uring_sqe").sizeof
        if int(self.s["ring"]["flags"]) & (1 << 10):        # SQE128
            size *= 2
        i = head
        while i != tail and (i - head) & 0xffffffff < 1 << 16:
            sqe = ptr(sqes + (i & mask) * size, "struct io_uring_sqe")
            if int(sqe["user_data"]) == op_addr:
                fixed = int(sqe["flags"]) & 1               # IOSQE_FIXED_FILE
                return int(sqe["opcode"]), -1 if fixed else int(sqe["fd"])
            i = (i + 1) & 0xffffffff
        return None

    # --- operations and hooks ---------------------------------------------

    def hooks(self):
        out = []
        head = int(self.s["hooks"].address)
        for h in _walk(head, int(self.s["hooks"]["next"]),
                       lambda a: int(ptr(a, "struct io_hook")["next"])):
            ho = ptr(h, "struct io_hook")
            name = ho["name"]
            out.append({"addr": h, "fiber": int(ho["fiber"]),
                        "name": name.string() if int(name) else "?",
                        "fd": int(ho["fd"]), "interrupt": int(ho["interrupt"]),
                        "op": int(ho["op"]), "nops": _count(int(ho["nops"]))})
        return out

    def ops(self, hooks=None):
        """Operations in flight, oldest first, each with what it belongs to
        (`hooks`: self.hooks(), when the caller has them already)."""
        op_size = T("struct uring_op").sizeof
        owner = {}
        for h in self.hooks() if hooks is None else hooks:
            for i in range(h["nops"]):
                owner[h["op"] + i * op_size] = h
        wake = int(self.s["wake_op"].address)
        head = int(self.s["inflight_ops"].address)
        has_deadline = "deadline" in [f.name for f in T("struct uring_op").fields()]
        out = []
        for o in _walk(head, int(self.s["inflight_ops"]["next"]),
                       lambda a: int(ptr(a, "struct uring_op")["next"])):
            op = ptr(o, "struct uring_op")
            rec = {"addr": o, "fiber": int(op["fiber"]), "opcode": int(op["opcode"]),
                   "fd": int(op["fd"]), "keep": int(op["keep"]),
                   "complete": function_name(int(op["complete"])),
                   "deadline": int(op["deadline"]) if has_deadline else 0,
                   "state": "submitted", "hook": owner.get(o)}
            if rec["opcode"] == 0 and rec["fd"] == -1:
                q = self.queued_sqe(o)
                if q is not None:
                    rec["opcode"], rec["fd"] = q
                    rec["state"] = "queued"
            if o == wake:
                rec["role"] = "wake-up (eventfd)"
            if rec["complete"] == "op_complete_quietly":
                rec["state"] = "cancelled"
            out.append(rec)
        return out

    # --- queues and tables --------------------------------------------------

    def _entries(self, array, start, length, capa):
        out = []
        for i in range(length):
            e = self.s[array][(start + i) % capa if capa else i]
            out.append({"fiber": int(e["fiber"]), "klass": int(e["klass"]),
                        "message": int(e["message"]), "token": int(e["token"])})
        return out

    def ready(self):
        capa = _count(int(self.s["ready_capa"]))
        return self._entries("ready", int(self.s["ready_head"]),
                             _count(int(self.s["ready_len"]), capa), capa)

    def held(self):
        return self._entries("held", 0, _count(int(self.s["held_len"]), int(self.s["held_capa"])), 0)

    def _table(self, name):
        tab = self.s[name]
        if not int(tab):
            return []
        out = []
        deleted = 2 ** 64 - 1
        for i in range(int(tab["entries_start"]), _count(int(tab["entries_bound"]))):
            e = tab["entries"][i]
            if int(e["hash"]) == deleted:
                continue
            out.append((int(e["key"]), int(e["record"])))
        return out

    def blocked(self):
        out = []
        for fiber, w in self._table("blocked"):
            bw = ptr(w, "struct block_wait")
            timer = bw["timer"]
            out.append({"fiber": fiber, "timed": int(timer["inflight"]),
                        "deadline": int(bw["deadline"].address) if int(timer["inflight"]) else 0})
        return out

    def woken(self):
        return [k for k, _ in self._table("woken")]

    def pipes(self):
        out = []
        for i in range(_count(int(self.s["npipes"]), int(self.s["pipes_capa"]))):
            p = self.s["pipes"][i]
            out.append({"r": int(p["fds"][0]), "w": int(p["fds"][1]),
                        "capacity": int(p["capacity"]), "busy": int(p["busy"])})
        return out

    def fixed(self):
        out = []
        if not int(self.s["fixed"]):
            return out
        for i in range(_count(int(self.s["fixed_high"]), 1 << 16)):
            b = self.s["fixed"][i]
            if int(b["buffer"]):
                out.append({"slot": i, "buffer": int(b["buffer"]), "base": int(b["base"]),
                            "size": int(b["size"])})
        return out

    def pbuf(self):
        p = int(self.s["pbuf"])
        if not p or not has_type("struct pbuf_pool"):
            return None
        pp = ptr(p, "struct pbuf_pool")
        return {"count": int(pp["count"]), "size": int(pp["size"]),
                "incremental": int(pp["incremental"]), "reads": int(pp["reads"]),
                "fallbacks": int(pp["fallbacks"]), "ring": int(pp["br"])}

    def generation_state(self):
        try:
            gen = int(gdb.parse_and_eval("fork_generation"))
        except gdb.error:
            return "?"
        return "current" if gen == int(self.s["generation"]) else \
            "stale (made before a fork: this child must not use it)"

    # --- every fiber it knows -------------------------------------------------

    def fibers(self):
        """{fiber VALUE: [what it is doing, ...]} in a stable order."""
        roles = {}

        def add(f, what):
            if f and not special_p(f):
                roles.setdefault(f, []).append(what)

        cur = self.current_fiber()
        if cur:
            add(cur, "running (current fiber of its thread)")
        if int(self.s["loop_fiber"]) != const("RUBY_Qnil"):
            add(int(self.s["loop_fiber"]), "event loop (#run)")
        shown = set()
        hooks = self.hooks()
        for op in self.ops(hooks):
            if op.get("role"):
                continue
            add(op["fiber"], describe_op(op))
            if op["hook"]:
                shown.add(op["hook"]["addr"])
        for h in hooks:
            interrupted = h["interrupt"] != const("RUBY_Qnil")
            if h["addr"] in shown and not interrupted:
                continue
            add(h["fiber"], "in hook %s fd=%d%s" % (
                h["name"], h["fd"],
                " interrupted by %s" % describe(h["interrupt"]) if interrupted else ""))
        for e in self.ready():
            add(e["fiber"], "ready" + (" to raise %s %s" % (describe(e["klass"]), describe(e["message"]))
                                       if e["klass"] != const("RUBY_Qnil") else ""))
        for e in self.held():
            add(e["fiber"], "holding a raise of %s %s until it enters a hook" % (
                describe(e["klass"]), describe(e["message"])))
        for b in self.blocked():
            add(b["fiber"], "blocked (#block)" + (" until %s" % format_deadline(b["deadline"])
                                                   if b["deadline"] else ""))
        for f in self.woken():
            add(f, "unblocked before it blocked")
        return roles

    def current_fiber(self):
        th = int(self.s["thread"])
        for t in vm.threads():
            if t.self == th and t.ec:
                f = vm.Fiber(t.current_fiber)
                return f.value
        return 0


def describe_op(op):
    text = "op %s" % opcode_name(op["opcode"])
    if op["fd"] >= 0:
        text += " fd=%d" % op["fd"]
    elif op["opcode"] not in (0,) and op["opcode"] != const("IORING_OP_TIMEOUT", 11):
        text += " fd=fixed"
    if op["deadline"]:
        text += " until %s" % format_deadline(op["deadline"])
    if op["hook"]:
        text += " (hook %s fd=%d)" % (op["hook"]["name"], op["hook"]["fd"])
    elif op["complete"] not in ("NULL",):
        text += " (%s)" % op["complete"]
    if op["state"] != "submitted":
        text += " [%s]" % op["state"]
    return text


def scheduler_of(value, thread=None):
    if special_p(value):
        return None
    try:
        d = typed_data(value)
    except Unreadable:
        return None
    if d is None or d[0] != WRAP_NAME:
        return None
    return Scheduler(value, d[1], thread)


def schedulers():
    """Every IO::Uring::Scheduler set on a thread, once each."""
    out, seen = [], set()
    for t in vm.threads():
        s = scheduler_of(t.scheduler, t)
        if s and s.value not in seen:
            seen.add(s.value)
            out.append(s)
    return out


def scheduler_arg(arg):
    """Schedulers named on a command line (a VALUE expression), or all."""
    if not arg:
        return schedulers()
    v = int(gdb.parse_and_eval(arg))
    s = scheduler_of(v)
    if s is None:
        raise gdb.GdbError("0x%x is not an IO::Uring::Scheduler" % v)
    for t in vm.threads():
        if t.scheduler == v:
            s.thread = t
    return [s]


def other_scheduler_name(value):
    try:
        d = typed_data(value)
        if d:
            return d[0]
        return class_name(u64(value + 8)) or "?"
    except Unreadable:
        return "?"
