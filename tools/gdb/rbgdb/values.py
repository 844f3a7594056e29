# Reading Ruby objects out of the inferior's memory.
#
# Nothing here runs code in the process: every value comes from memory
# through the types and constants of its debug info, so the same calls work
# on a live ruby and on a core file.

import struct

import gdb


class Unreadable(Exception):
    """Memory the debugger cannot read (torn list, not in the core)."""


_types = {}
_consts = {}


def reset():
    """Forget what was looked up (a new program or core was loaded)."""
    _types.clear()
    _consts.clear()


def T(name):
    t = _types.get(name)
    if t is None:
        t = _types[name] = gdb.lookup_type(name)
    return t


def has_type(name):
    try:
        T(name)
        return True
    except gdb.error:
        return False


def has_field(tname, field):
    return any(f.name == field for f in T(tname).strip_typedefs().fields())


def offset_of(tname, field):
    for f in T(tname).strip_typedefs().fields():
        if f.name == field:
            return f.bitpos // 8
    raise KeyError("%s has no field %s" % (tname, field))


def const(name, default=None):
    """An enum constant of the debug info (RUBY_Qnil, IORING_OP_READ, ...)."""
    if name in _consts:
        return _consts[name]
    try:
        v = int(gdb.parse_and_eval(name))
    except gdb.error:
        if default is None:
            raise
        v = default
    _consts[name] = v
    return v


def symbol_address(name):
    """The address of a global or file-static variable, or None."""
    for lookup in (gdb.lookup_global_symbol, gdb.lookup_static_symbol):
        try:
            sym = lookup(name)
        except gdb.error:
            sym = None
        if sym is not None and sym.is_variable:
            return int(sym.value().address)
    return None


def ptr(addr, tname):
    return gdb.Value(addr).cast(T(tname).pointer())


def read(addr, size):
    try:
        return bytes(gdb.selected_inferior().read_memory(addr, size))
    except gdb.MemoryError:
        raise Unreadable("0x%x" % addr)


def u32(addr):
    return struct.unpack("<I", read(addr, 4))[0]


def u64(addr):
    return struct.unpack("<Q", read(addr, 8))[0]


def readable(addr, size=1):
    try:
        read(addr, size)
        return True
    except Unreadable:
        return False


def field(value, name):
    """value[name], raising Unreadable instead of gdb.MemoryError."""
    try:
        v = value[name]
        v.fetch_lazy()
        return v
    except gdb.MemoryError:
        raise Unreadable(str(name))


def Qnil():
    return const("RUBY_Qnil")


def special_p(v):
    return (v & 7) != 0 or v in (const("RUBY_Qfalse"), const("RUBY_Qnil"),
                                 const("RUBY_Qtrue"), const("RUBY_Qundef"))


def rflags(v):
    return u64(v)            # struct RBasic starts with flags


def rtype(v):
    if special_p(v):
        return None
    return rflags(v) & const("RUBY_T_MASK")


def rclass_of(v):
    return u64(v + 8)        # RBasic.klass


def rstring(v, limit=200):
    if rtype(v) != const("RUBY_T_STRING"):
        return None
    s = ptr(v, "struct RString")
    n = int(s["len"])
    if rflags(v) & const("RUBY_FL_USER1"):      # RSTRING_NOEMBED
        addr = int(s["as"]["heap"]["ptr"])
    else:
        addr = int(s["as"]["embed"]["ary"].address)
    return read(addr, min(max(n, 0), limit)).decode("utf-8", "replace")


def rarray(v, limit=100000):
    if rtype(v) != const("RUBY_T_ARRAY"):
        return []
    a = ptr(v, "struct RArray")
    f = rflags(v)
    if f & const("RUBY_FL_USER1"):              # RARRAY_EMBED_FLAG
        n = (f >> (const("RUBY_FL_USHIFT") + 3)) & 0x7f
        addr = int(a["as"]["ary"].address)
    else:
        n = int(a["as"]["heap"]["len"])
        addr = int(a["as"]["heap"]["ptr"])
    n = min(n, limit)
    raw = read(addr, 8 * n) if n else b""
    return list(struct.unpack("<%dQ" % n, raw))


def typed_data(v):
    """(type name, data address) of a typed T_DATA object, or None."""
    if rtype(v) != const("RUBY_T_DATA"):
        return None
    td = ptr(v, "struct RTypedData")
    if has_field("struct RTypedData", "typed_flag"):
        flag = int(td["typed_flag"])
        if not 0 < flag <= 3:
            return None
        embedded = flag & 2
        tp = int(td["type"])
    else:                       # master: the type pointer carries the flag
        tp = int(td["type"])
        embedded = tp & 1
        tp &= ~3
    name = ptr(tp, "rb_data_type_t")["wrap_struct_name"].string()
    if embedded:
        data = v + offset_of("struct RTypedData", "data")
    else:
        data = int(td["data"])
    return name, data


def data_of(v, wrap_name):
    d = typed_data(v)
    if d is None or d[0] != wrap_name:
        return None
    return d[1]


ID_ENTRY_UNIT = 512     # symbol.c: IDs per bucket of ruby_global_symbols.ids
ID_ENTRY_SIZE = 2       # symbol.c: (String, Symbol) per ID


def id_name(i):
    """The name of an ID, from the symbol table (3.4's layout)."""
    try:
        serial = i >> const("RUBY_ID_SCOPE_SHIFT", 4) if i > const("tLAST_OP_ID") else i
        ids = int(gdb.parse_and_eval("ruby_global_symbols")["ids"])
        buckets = rarray(ids)
        idx = serial // ID_ENTRY_UNIT
        if idx >= len(buckets) or buckets[idx] == Qnil():
            return None
        entry = rarray(buckets[idx])
        k = (serial % ID_ENTRY_UNIT) * ID_ENTRY_SIZE
        return rstring(entry[k]) if k < len(entry) else None
    except (gdb.error, Unreadable):
        return None


def class_name(klass, depth=0):
    """The name of a class or module (singletons: their class's)."""
    try:
        if special_p(klass) or depth > 8:
            return None
        t = rtype(klass)
        if t == const("RUBY_T_ICLASS") or (t == const("RUBY_T_CLASS") and
                                          rflags(klass) & const("RUBY_FL_SINGLETON")):
            return class_name(int(ptr(klass, "struct RClass")["super"]), depth + 1)
        if t not in (const("RUBY_T_CLASS"), const("RUBY_T_MODULE")):
            return None
        ext = ptr(klass, "struct RClass_and_rb_classext_t")["classext"]
        return rstring(int(ext["classpath"])) if int(ext["classpath"]) else None
    except (gdb.error, Unreadable):
        return None


def describe(v):
    """A short, stable text for a VALUE: nil, 42, "str", #<Class 0x...>."""
    if v == Qnil():
        return "nil"
    if v == const("RUBY_Qtrue"):
        return "true"
    if v == const("RUBY_Qfalse"):
        return "false"
    if v & 1:
        return str(v >> 1)
    if special_p(v):
        return "0x%x" % v
    try:
        t = rtype(v)
        if t == const("RUBY_T_STRING"):
            return '"%s"' % rstring(v, 60)
        if t in (const("RUBY_T_CLASS"), const("RUBY_T_MODULE")):
            return class_name(v) or "#<Class 0x%x>" % v
        cname = class_name(rclass_of(v)) or "?"
        if t == const("RUBY_T_FILE"):
            fptr = u64(v + 16)          # struct RFile: basic, fptr
            fd = ptr(fptr, "struct rb_io")["fd"] if fptr else None
            return "#<%s fd=%s 0x%x>" % (cname, int(fd) if fd is not None else "-", v)
        d = typed_data(v)
        if d and d[0] == "Process::Handle" and has_type("struct process_handle"):
            return "#<%s pid=%d 0x%x>" % (cname, int(ptr(d[1], "struct process_handle")["pid"]), v)
        return "#<%s 0x%x>" % (cname, v)
    except Unreadable:
        return "<unreadable 0x%x>" % v


def function_name(addr):
    """The function at a code address (a callback pointer), or hex."""
    if not addr:
        return "NULL"
    try:
        block = gdb.block_for_pc(addr)
        while block is not None and block.function is None:
            block = block.superblock
        if block is not None:
            return block.function.name
    except RuntimeError:
        pass
    sym = gdb.execute("info symbol 0x%x" % addr, to_string=True).split()
    return sym[0] if sym and sym[0] != "No" else "0x%x" % addr
