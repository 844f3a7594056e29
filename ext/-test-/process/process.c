/*
 * Bug::Process: reaches the process C API from tests.  Not part of any
 * public API.
 */
#include "ruby/ruby.h"

/* Bug::Process.status_for(pid, status, error) -> Process::Status */
static VALUE
status_for(VALUE self, VALUE pid, VALUE status, VALUE error)
{
    return rb_process_status_for(NUM2PIDT(pid), NUM2INT(status), NUM2INT(error));
}

void
Init_process(void)
{
    VALUE mBug = rb_define_module("Bug");
    VALUE m = rb_define_module_under(mBug, "Process");

    rb_define_module_function(m, "status_for", status_for, 3);
}
