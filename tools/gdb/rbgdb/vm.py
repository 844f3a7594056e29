# The VM from memory: ractors, threads, fibers and Ruby backtraces.

import gdb

from .values import (T, Unreadable, const, describe, has_field, id_name, offset_of,
                     ptr, rarray, rflags, rstring, rtype, special_p, typed_data, u64)

FIBER_STATUS = ("CREATED", "RESUMED", "SUSPENDED", "TERMINATED")
THREAD_STATUS = ("runnable", "stopped", "stopped_forever", "killed")


def ccan_list(head_addr, node_offset, limit=100000):
    """Addresses of the containers on a ccan list whose head is at head_addr."""
    out = []
    seen = set()
    node = u64(head_addr)                   # head.n.next
    while node != head_addr:
        if len(out) >= limit or node == 0 or node in seen:
            raise Unreadable("list at 0x%x (torn)" % head_addr)
        seen.add(node)
        out.append(node - node_offset)
        node = u64(node)
    return out


def vm():
    try:
        v = gdb.parse_and_eval("ruby_current_vm_ptr")
    except gdb.error:
        raise gdb.GdbError("no ruby here: ruby_current_vm_ptr is unknown "
                           "(load the ruby executable with its debug info)")
    if int(v) == 0:
        raise gdb.GdbError("the VM is not set up (yet, or any more)")
    return v


class Thread:
    def __init__(self, number, addr, ractor):
        self.number = number
        self.addr = addr
        self.ractor = ractor
        self.th = ptr(addr, "rb_thread_t")

    @property
    def self(self):
        return int(self.th["self"])

    @property
    def tid(self):
        nt = self.th["nt"]
        if int(nt) == 0:
            return 0
        return int(nt["tid"]) if has_field("struct rb_native_thread", "tid") else 0

    @property
    def ec(self):
        return int(self.th["ec"])

    @property
    def current_fiber(self):
        return int(self.th["ec"]["fiber_ptr"]) if self.ec else 0

    @property
    def scheduler(self):
        return int(self.th["scheduler"])

    @property
    def name(self):
        n = int(self.th["name"])
        return None if special_p(n) else rstring(n)

    def status(self):
        s = int(self.th["status"])
        return THREAD_STATUS[s] if s < len(THREAD_STATUS) else str(s)

    def label(self):
        return "thread %d" % self.number


def threads():
    """Every Ruby thread of every ractor, numbered as `ruby threads` shows them."""
    v = vm()
    out = []
    ractors = ccan_list(int(v["ractor"]["set"].address),
                        offset_of("struct rb_ractor_struct", "vmlr_node"))
    lt = offset_of("rb_thread_t", "lt_node")
    for r in ractors:
        rp = ptr(r, "struct rb_ractor_struct")
        for t in ccan_list(int(rp["threads"]["set"].address), lt):
            out.append(Thread(len(out) + 1, t, r))
    return out


def thread_of_lwp(lwp):
    for t in threads():
        if t.tid == lwp:
            return t
    return None


# --- fibers -----------------------------------------------------------------

def fiber_ptr(v):
    """The rb_fiber_t of a Fiber VALUE, or an rb_fiber_t address; None for
    anything else (another object, a freed slot, a stray pointer)."""
    if special_p(v):
        return None
    try:
        d = typed_data(v)
    except Unreadable:
        d = None
    if d is not None and d[0] == "fiber":
        return d[1]
    # An rb_fiber_t: its object points back to it, or it is a root fiber
    # Ruby never made an object for (then it is some thread's).
    f = ptr(v, "struct rb_fiber_struct")
    if int(f["cont"]["type"]) != const("FIBER_CONTEXT"):
        return None
    self_ = int(f["cont"]["self"])
    if self_ == 0:
        return v if any(t.ec and t.current_fiber == v or int(t.th["root_fiber"]) == v
                        for t in threads()) else None
    try:
        d = typed_data(self_)
    except Unreadable:
        return None
    return v if d is not None and d[0] == "fiber" and d[1] == v else None


class Fiber:
    def __init__(self, addr, thread=None):
        self.addr = addr
        self.f = ptr(addr, "struct rb_fiber_struct")
        self.thread = thread

    @property
    def value(self):
        return int(self.f["cont"]["self"])

    @property
    def status(self):
        s = int(self.f["status"])
        return FIBER_STATUS[s] if s < len(FIBER_STATUS) else str(s)

    @property
    def blocking(self):
        return int(self.f["blocking"])

    @property
    def ec(self):
        return int(self.f["cont"]["saved_ec"].address)

    def label(self):
        v = self.value
        if v:
            return "fiber 0x%x" % v
        return "fiber (root, rb_fiber_t 0x%x)" % self.addr

    def stack_pointer(self):
        return int(self.f["context"]["stack_pointer"])


def fiber(v, thread=None):
    p = fiber_ptr(v)
    return Fiber(p, thread) if p else None


# --- backtraces -------------------------------------------------------------

def _iseq_p(v):
    if not v or special_p(v) or rtype(v) != const("RUBY_T_IMEMO"):
        return False
    return (rflags(v) >> const("RUBY_FL_USHIFT")) & 0xf == const("imemo_iseq")


def _succ_index_lookup(table, pos):
    """rank of pos in iseq.c's succinct bitvector (the instruction's index + 1)."""
    sd = table.cast(T("struct succ_index_table").pointer())
    imm = 54                    # IMMEDIATE_TABLE_SIZE: 9 7-bit ranks per word, 6 words
    if pos < imm:
        return (int(sd["imm_part"][pos // 9]) >> (7 * (pos % 9))) & 0x7f
    x = pos - imm
    block = sd["succ_part"][x // 512]
    bit = x % 512
    small = bit // 64
    rank = int(block["rank"])
    if small:
        rank += (int(block["small_block_ranks"]) >> (9 * (small - 1))) & 0x1ff
    bits = (int(block["bits"][small]) << (63 - bit % 64)) & (2 ** 64 - 1)
    return rank + bin(bits).count("1")


def iseq_line(iseq, pc):
    """The line a frame of iseq is at, with pc its next instruction."""
    body = iseq["body"]
    if pc == 0:
        return int(body["location"]["first_lineno"])
    pos = (pc - int(body["iseq_encoded"])) // 8
    if pos:
        pos -= 1
    info = body["insns_info"]
    size = int(info["size"])
    if size == 0:
        return 0
    if size == 1:
        return int(info["body"][0]["line_no"])
    positions = int(info["positions"])
    if positions and not int(info["succ_index_table"]):
        # VM_INSN_INFO_TABLE_IMPL 1, or a build that keeps positions
        lo, hi = 0, size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if int(info["positions"][mid]) <= pos:
                lo = mid
            else:
                hi = mid
        return int(info["body"][lo]["line_no"])
    idx = _succ_index_lookup(info["succ_index_table"], pos)
    return int(info["body"][max(idx - 1, 0)]["line_no"])


def _path(v):
    if rtype(v) == const("RUBY_T_ARRAY"):
        a = rarray(v, 2)
        v = a[0] if a else 0
    return rstring(v) or "?"


def _cfp_iseq(cfp):
    return int(cfp["iseq"] if has_field("rb_control_frame_t", "iseq") else cfp["_iseq"])


def backtrace(ec_addr, limit=64):
    """Frames of an execution context, innermost first: dicts with
    kind (ruby/cfunc), path, line, label, name, self."""
    ec = ptr(ec_addr, "rb_execution_context_t")
    cfp_t = T("rb_control_frame_t").pointer()
    cfp = ec["cfp"]
    stack = int(ec["vm_stack"])
    if not int(cfp) or not stack:
        return []
    end = (ec["vm_stack"] + int(ec["vm_stack_size"])).cast(cfp_t) - 1
    magic_mask = const("VM_FRAME_MAGIC_MASK")
    cfunc = const("VM_FRAME_MAGIC_CFUNC")
    dummy = const("VM_FRAME_MAGIC_DUMMY")
    out = []
    while cfp < end and len(out) < limit:
        try:
            ep = cfp["ep"]
            magic = int(ep[0]) & magic_mask
            if magic == cfunc:
                me = int(ep[-2])
                name = None
                if me and not special_p(me):
                    m = ptr(me, "rb_callable_method_entry_t")
                    name = id_name(int(m["def"]["original_id"]))
                out.append({"kind": "cfunc", "name": name or "?",
                            "self": int(cfp["self"])})
            elif magic != dummy:
                iseq = _cfp_iseq(cfp)
                if _iseq_p(iseq):
                    iq = ptr(iseq, "rb_iseq_t")
                    loc = iq["body"]["location"]
                    out.append({"kind": "ruby", "path": _path(int(loc["pathobj"])),
                                "line": iseq_line(iq, int(cfp["pc"])),
                                "label": rstring(int(loc["label"])) or "?"})
        except (gdb.MemoryError, Unreadable) as e:
            out.append({"kind": "unreadable", "where": str(e)})
            break
        cfp += 1
    return out


def format_frame(fr):
    if fr["kind"] == "ruby":
        return "%s:%d:in '%s'" % (fr["path"], fr["line"], fr["label"])
    if fr["kind"] == "cfunc":
        return "[C] %s self=%s" % (fr["name"], describe(fr["self"]))
    return "<unreadable %s>" % fr.get("where", "")


def ruby_backtrace_lines(ec_addr, indent="    ", limit=64):
    return [indent + format_frame(fr) for fr in backtrace(ec_addr, limit)]
