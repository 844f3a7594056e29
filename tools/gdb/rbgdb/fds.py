# Who uses a descriptor, and which IO#close waits for whom (patch 0001's
# closing state: vm->waiting_fds, and patch 0015's vm->closing_fds).

from . import vm
from .values import Unreadable, const, has_field, offset_of, ptr


def _user(addr, threads):
    w = ptr(addr, "struct waiting_fd")
    th = int(w["th"])
    thread = next((t for t in threads if t.addr == th), None)
    fiber = int(w["fiber"]) if has_field("struct waiting_fd", "fiber") else const("RUBY_Qnil")
    rec = {"fd": int(w["fd"]), "thread": thread, "th": th,
           "kind": "thread" if fiber == const("RUBY_Qnil") else "hook",
           "fiber": fiber if fiber != const("RUBY_Qnil") else 0,
           "interrupted": int(w["interrupted"]) if has_field("struct waiting_fd", "interrupted") else 0}
    if rec["kind"] == "thread" and int(w["ec"]):
        # the fiber that waits (root fibers often have no object: 0)
        rec["fiber"] = vm.Fiber(int(ptr(int(w["ec"]), "rb_execution_context_t")["fiber_ptr"])).value
    return rec


def users():
    """Threads in blocking calls and fibers in hooks, by descriptor."""
    v = vm.vm()
    threads = vm.threads()
    node = offset_of("struct waiting_fd", "wfd_node")
    return [_user(a, threads) for a in vm.ccan_list(int(v["waiting_fds"].address), node)]


def closes():
    """IO#close calls waiting for their users: [{fd, closer..., users}]."""
    v = vm.vm()
    if not has_field("rb_vm_t", "closing_fds"):
        return None
    threads = vm.threads()
    out = []
    node = offset_of("struct rb_io_close_wait_list", "closing_node")
    wnode = offset_of("struct waiting_fd", "wfd_node")
    for b in vm.ccan_list(int(v["closing_fds"].address), node):
        busy = ptr(b, "struct rb_io_close_wait_list")
        closer = int(busy["closing_thread"])
        rec = {"addr": b, "fd": int(busy["fd"]),
               "thread": next((t for t in threads if t.self == closer), None),
               "closing_thread": closer, "closing_fiber": int(busy["closing_fiber"]),
               "users": []}
        try:
            rec["users"] = [_user(a, threads) for a in
                            vm.ccan_list(int(busy["pending_fd_users"].address), wnode)]
        except Unreadable as e:
            rec["error"] = str(e)
        out.append(rec)
    return out
