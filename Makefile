# Build CRuby 3.4 with the io_uring Fiber::Scheduler series, and test it.
#
#   make                  patched ruby in build/ruby (bin/ruby)
#   make test             our tests and the CRuby suites the series touches
#   make test-all         CRuby's full test-all on the patched ruby
#   make test-nouring     `make test` with io_uring disabled at runtime
#   make test-nopidfd     the process tests with Process::Handle on pids
#   make test-gdb         tools/gdb against live processes and core files
#   make test-asan        `make test` on a ruby built with AddressSanitizer and UBSan
#   make stress           randomized stress (STRESS_SECONDS=, SEED=)
#   make stock            unpatched ruby in build/stock/ruby, for comparisons
#   make CRUBY_VERSION=V  another pinned Debian ruby3.4 release (3.4.5, 3.4.11),
#                         built in build-V unless BUILD= says otherwise
#   make RUBY_SRC=DIR     use another CRuby tree (git checkout or tarball tree):
#                         3.4, or master with patches/master (see README)
#   make CONFIGURE_ARGS=--without-liburing BUILD=build-nouring
#                         a patched ruby without IO::Uring::Scheduler
#
# Nothing is downloaded but Debian source packages, fetched once with apt-get
# into $(CACHE).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := all

TOP := $(abspath .)

# The base: Debian's ruby3.4 source package, pristine upstream source.  The
# default is 3.4.5: the archive copy this project builds from lists 3.4.11
# but serves no files for it (404), so a fresh machine could not build it.
# (CRUBY_VERSION, not RUBY_VERSION: version managers export that one.)
DEFAULT_CRUBY_VERSION := 3.4.5
CRUBY_VERSION ?= $(DEFAULT_CRUBY_VERSION)
RUBY_DEB_3.4.5 := ruby3.4 3.4.5-1~exp1 141fb3b0192b8196361b3b4d6c29fc9b10c0798dbe54ada1539d9f1c311bfcbf
RUBY_DEB_3.4.11 := ruby3.4 3.4.11-1~exp1 ff0df699a412bc918b63a1a9d51920c2a75b2cf1b07bf5d062ac8e56f274b44b
RUBY_DEB = $(or $(RUBY_DEB_$(CRUBY_VERSION)),$(error CRUBY_VERSION=$(CRUBY_VERSION): no pinned source package (3.4.5, 3.4.11); use RUBY_SRC=DIR for another tree))

BUILD ?= $(TOP)/build$(if $(filter-out $(DEFAULT_CRUBY_VERSION),$(CRUBY_VERSION)),-$(CRUBY_VERSION))
override BUILD := $(abspath $(BUILD))
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ruby-uring-series
JOBS ?= $(shell nproc)

LIBURING_DEB := liburing 2.15-1 efd299ff27cde40a45efc7dbb97ebe40a0c461921cb462f1d62611642bb4ee86

RUBY_SRC ?=
CONFIGURE_ARGS ?=
LIBURING ?= $(BUILD)/liburing

TREE := $(BUILD)/src
OBJ := $(BUILD)/obj
PREFIX := $(BUILD)/ruby
STOCK := $(BUILD)/stock

# `make test`: our tests, then the CRuby suites the series touches (our
# test/fiber files run with the fiber suite they join).
OUR_TESTS := $(addprefix $(TREE)/,$(shell find test -name "test_*.rb" -not -path "test/fiber/*" \
	-not -path "test/gdb/*" | LC_ALL=C sort))
TOUCHED_SUITES := fiber io ruby/test_io.rb ruby/test_io_buffer.rb ruby/test_io_m17n.rb \
	ruby/test_io_timeout.rb ruby/test_process.rb ruby/test_thread.rb socket openssl
TESTOPTS ?= -j$(JOBS)
# Tests that fail on stock 3.4.5 only because they run as root (see the files).
EXCLUDE_OPTS := -X $(TREE)/test/.excludes-root

CONFIGURE_FLAGS := --prefix=$(PREFIX) --disable-install-doc \
	$(if $(filter --without-liburing --with-liburing-dir=%,$(CONFIGURE_ARGS)),,--with-liburing-dir=$(LIBURING)) \
	$(CONFIGURE_ARGS)

.PHONY: all deps liburing tree tarball-path configure ruby stock test test-all test-nouring test-nopidfd test-gdb test-asan stress clean distclean

all: ruby

deps:
	@$(TOP)/tools/deps.sh

# --- sources ---------------------------------------------------------------
$(CACHE)/ruby-$(CRUBY_VERSION)-tarball:
	@mkdir -p $(CACHE)
	@$(TOP)/tools/fetch-source.sh $(RUBY_DEB) $(CACHE) > $@.tmp && mv $@.tmp $@

$(CACHE)/liburing-tarball:
	@mkdir -p $(CACHE)
	@$(TOP)/tools/fetch-source.sh $(LIBURING_DEB) $(CACHE) > $@.tmp && mv $@.tmp $@

ORIGIN = $(if $(RUBY_SRC),$(abspath $(RUBY_SRC)),$$(cat $(CACHE)/ruby-$(CRUBY_VERSION)-tarball))
ORIGIN_DEP = $(if $(RUBY_SRC),,$(CACHE)/ruby-$(CRUBY_VERSION)-tarball)

# The path of the pristine source tarball (fetched if need be), for scripts.
tarball-path: $(CACHE)/ruby-$(CRUBY_VERSION)-tarball
	@cat $<

# --- liburing (static, position independent: extensions link it too) -------
liburing: $(BUILD)/liburing/lib/liburing.a

$(BUILD)/liburing/lib/liburing.a: | $(CACHE)/liburing-tarball deps
	rm -rf $(BUILD)/liburing-src && mkdir -p $(BUILD)/liburing-src
	tar xzf $$(cat $(CACHE)/liburing-tarball) -C $(BUILD)/liburing-src --strip-components=1
	cd $(BUILD)/liburing-src && ./configure --prefix=$(BUILD)/liburing > /dev/null
	$(MAKE) -C $(BUILD)/liburing-src/src -j$(JOBS) ENABLE_SHARED=0 CFLAGS="-O2 -g -fPIC" > /dev/null
	$(MAKE) -C $(BUILD)/liburing-src/src install ENABLE_SHARED=0 > /dev/null
	@echo "liburing: installed $$(sed -n 's/^Version: //p' $(BUILD)/liburing-src/liburing.spec) (static) in $(BUILD)/liburing"

# --- patched ruby ------------------------------------------------------------
tree: | deps $(ORIGIN_DEP)
	@$(TOP)/tools/prepare-tree.sh $(ORIGIN) $(TREE)

configure: tree $(if $(findstring $(LIBURING),$(CONFIGURE_FLAGS)),liburing)
	@if [ -f $(OBJ)/Makefile ] && [ "$$(cat $(OBJ)/.configure-flags 2>/dev/null)" != '$(CONFIGURE_FLAGS)' ]; then \
	    echo 'configure flags changed: rebuilding $(OBJ) from scratch'; \
	    rm -rf $(OBJ); \
	fi
	@mkdir -p $(OBJ)
	@if [ ! -f $(OBJ)/Makefile ] || [ "$$(cat $(OBJ)/.configure-flags 2>/dev/null)" != '$(CONFIGURE_FLAGS)' ]; then \
	    echo 'configure $(CONFIGURE_FLAGS)'; \
	    (cd $(OBJ) && $(TREE)/configure $(CONFIGURE_FLAGS) > configure.log) || \
	        { tail -n 30 $(OBJ)/configure.log; exit 1; }; \
	    echo '$(CONFIGURE_FLAGS)' > $(OBJ)/.configure-flags; \
	fi

# HAVE_BASERUBY=no: `make install` must not try to download bundled gems.
ruby: configure
	+$(MAKE) -C $(OBJ) -j$(JOBS) > $(OBJ)/make.log 2>&1 || { tail -n 40 $(OBJ)/make.log; exit 1; }
	+$(MAKE) -C $(OBJ) install-nodoc HAVE_BASERUBY=no > $(OBJ)/install.log 2>&1 || \
	    { tail -n 40 $(OBJ)/install.log; exit 1; }
	@$(PREFIX)/bin/ruby -v

# --- stock ruby --------------------------------------------------------------
stock: | deps $(ORIGIN_DEP)
	@$(TOP)/tools/prepare-tree.sh --stock $(ORIGIN) $(STOCK)/src
	@mkdir -p $(STOCK)/obj
	@[ -f $(STOCK)/obj/Makefile ] || (cd $(STOCK)/obj && $(STOCK)/src/configure \
	    --prefix=$(STOCK)/ruby --disable-install-doc > configure.log)
	+$(MAKE) -C $(STOCK)/obj -j$(JOBS) > $(STOCK)/obj/make.log 2>&1 || { tail -n 40 $(STOCK)/obj/make.log; exit 1; }
	+$(MAKE) -C $(STOCK)/obj install-nodoc HAVE_BASERUBY=no > $(STOCK)/obj/install.log 2>&1 || \
	    { tail -n 40 $(STOCK)/obj/install.log; exit 1; }
	@$(STOCK)/ruby/bin/ruby -v

# --- tests -------------------------------------------------------------------
test: ruby
	+$(MAKE) -C $(OBJ) test-all TESTS="$(OUR_TESTS) $(TOUCHED_SUITES)" \
	    TESTOPTS="$(TESTOPTS) $(EXCLUDE_OPTS)"

test-all: ruby
	+$(MAKE) -C $(OBJ) test-all TESTOPTS="$(TESTOPTS) $(EXCLUDE_OPTS)"

# io_uring refused by the kernel (as with io_uring_disabled=2 or a seccomp
# filter).  As root this flips the real sysctl for the run and restores it;
# otherwise RUBY_IO_URING=0 makes IO::Uring::Scheduler.new fail the same way.
test-nouring: ruby
	@$(TOP)/tools/without-io-uring.sh $(MAKE) -C $(OBJ) test-all \
	    TESTS="$(OUR_TESTS) $(TOUCHED_SUITES)" TESTOPTS="$(TESTOPTS) $(EXCLUDE_OPTS)"

# Process::Handle without pidfds (RUBY_PROCESS_HANDLE_PIDFD=0), as on
# systems and kernels that lack them.
PROCESS_TESTS := $(filter %process_handle.rb %status_for.rb,$(OUR_TESTS)) \
	$(TREE)/test/fiber/test_process_open.rb ruby/test_process.rb
test-nopidfd: ruby
	RUBY_PROCESS_HANDLE_PIDFD=0 $(MAKE) -C $(OBJ) test-all \
	    TESTS="$(PROCESS_TESTS)" TESTOPTS="$(TESTOPTS) $(EXCLUDE_OPTS)"

# tools/gdb: gdb (installed here when missing, as root) attached to rubies
# parked in known operations and reading their gcores.  Without gdb the
# tests are skipped, saying so.
test-gdb: ruby
	-@$(TOP)/tools/deps.sh gdb
	RUBY_GDB_TOOLS=$(TOP)/tools/gdb/ruby_uring.py $(MAKE) -C $(OBJ) test-all \
	    TESTS="$(TREE)/test/gdb/test_gdb.rb" TESTOPTS="-v"

# AddressSanitizer (GCC's; CRuby's own ASan support: poisoned heap slots,
# fiber stacks switched with __sanitizer_start_switch_fiber) in its own
# build tree.  -DUSE_MN_THREADS=0: M:N threads' thread-local variables do
# not work under ASan (Bug #20243, CRuby's doc/contributing/building_ruby.md).
# detect_leaks=0: ruby does not free its heap at exit (RUBY_FREE_AT_EXIT
# would), so LeakSanitizer would report every process; leaks of
# descriptors and buffers are what the tests count themselves.
# test/.excludes-asan: two tests that fail only under ASan (see the files).
# tools/asan/munmap.h with --wrap=munmap: GCC's runtime keeps the poison of
# unmapped ranges, which CRuby 3.4's GC leaves on the heap pages it unmaps
# (see the file).
# UndefinedBehaviorSanitizer too, in the same build: a report halts the
# process (halt_on_error), so it fails the test that ran it.  CRuby 3.4 has
# no UBSan support of its own; tools/asan/ubsan.supp suppresses what its
# code does not pass (alignment, on purpose; one NULL in imemo.c; see the
# file).
ASAN_BUILD ?= $(TOP)/build-asan
ASAN_CFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -DUSE_MN_THREADS=0 \
	-include $(TOP)/tools/asan/munmap.h
ASAN_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(TOP)/tools/asan/ubsan.supp
test-asan:
	$(ASAN_ENV) $(MAKE) BUILD=$(ASAN_BUILD) \
	    CONFIGURE_ARGS='cflags="$(ASAN_CFLAGS)" optflags=-O1 LDFLAGS="-fsanitize=address,undefined -Wl,--wrap=munmap"' \
	    RUBY_TEST_TIMEOUT_SCALE=5 EXCLUDE_OPTS='-X $$(TREE)/test/.excludes-root -X $$(TREE)/test/.excludes-asan' test

# tools/stress.rb on the patched ruby: STRESS_SECONDS (default 300), SEED
# (default random; printed, and the same seed draws the same operations).
STRESS_SECONDS ?= 300
stress: ruby
	$(PREFIX)/bin/ruby $(TOP)/tools/stress.rb --seconds $(STRESS_SECONDS) $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(OBJ) $(PREFIX) $(STOCK)/obj $(STOCK)/ruby

distclean:
	rm -rf $(BUILD)
