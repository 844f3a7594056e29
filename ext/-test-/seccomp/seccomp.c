/*
 * Bug::Seccomp: refuses system calls with an errno in the current process
 * (a seccomp filter), for tests of what happens when the kernel refuses
 * io_uring after start-up.  Not part of any public API.
 */
#include "ruby/ruby.h"
#include <errno.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define MAX_REFUSED 16

/*
 * Bug::Seccomp.refuse(numbers, errno) -> nil
 *
 * From now on, the system calls `numbers` fail with `errno` in every
 * thread of the process (the filter is synchronized to the threads that
 * exist, SECCOMP_FILTER_FLAG_TSYNC) and in its children; nothing else
 * changes.  There is no way back.
 */
static VALUE
seccomp_refuse(VALUE self, VALUE numbers, VALUE err)
{
    struct sock_filter prog[4 + 2 * MAX_REFUSED + 1];
    struct sock_fprog fprog;
    unsigned short n = 0;
    unsigned int nrs[MAX_REFUSED];
    long i, count;
    int e = NUM2INT(err);

    Check_Type(numbers, T_ARRAY);
    count = RARRAY_LEN(numbers);
    if (count > MAX_REFUSED) rb_raise(rb_eArgError, "at most %d system calls", MAX_REFUSED);
    /* converted first: #to_int may change the Array */
    for (i = 0; i < count; i++) nrs[i] = NUM2UINT(rb_ary_entry(numbers, i));
    if (e <= 0 || (unsigned int)e > SECCOMP_RET_DATA) rb_raise(rb_eArgError, "errno out of range: %d", e);
#ifdef __x86_64__
    /* another ABI (i386 through int 0x80) numbers its calls differently */
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
#endif
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (i = 0; i < count; i++) {
        prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], 0, 1);
        prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (e & SECCOMP_RET_DATA));
    }
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    fprog.len = n;
    fprog.filter = prog;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) rb_sys_fail("prctl(PR_SET_NO_NEW_PRIVS)");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog) != 0)
        rb_sys_fail("seccomp(SECCOMP_SET_MODE_FILTER)");
    return Qnil;
}

void
Init_seccomp(void)
{
    VALUE mBug = rb_define_module("Bug");
    VALUE m = rb_define_module_under(mBug, "Seccomp");

    rb_define_module_function(m, "refuse", seccomp_refuse, 2);
#ifdef SYS_io_uring_setup
    rb_define_const(m, "IO_URING_SETUP", INT2FIX(SYS_io_uring_setup));
#endif
#ifdef SYS_io_uring_enter
    rb_define_const(m, "IO_URING_ENTER", INT2FIX(SYS_io_uring_enter));
#endif
}
