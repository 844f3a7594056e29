/*
 * Bug::IOSplice: switches IO.copy_stream's splice(2) path (io_splice.c)
 * off and on, so tests can run the same copies through the ordinary
 * read(2)/write(2) loop as their reference.  Not part of any public API.
 */
#include "ruby/ruby.h"
#include "internal/io_splice.h"

/* Bug::IOSplice.copy_stream_splice? -> true or false */
static VALUE
splice_enabled_p(VALUE self)
{
    return rb_io_copy_stream_splice_enabled ? Qtrue : Qfalse;
}

/* Bug::IOSplice.copy_stream_splice = true or false */
static VALUE
splice_set_enabled(VALUE self, VALUE enabled)
{
    rb_io_copy_stream_splice_enabled = RTEST(enabled);
    return enabled;
}

void
Init_io_splice(void)
{
    VALUE mBug = rb_define_module("Bug");
    VALUE m = rb_define_module_under(mBug, "IOSplice");

    rb_define_module_function(m, "copy_stream_splice?", splice_enabled_p, 0);
    rb_define_module_function(m, "copy_stream_splice=", splice_set_enabled, 1);
}
