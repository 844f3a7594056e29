# frozen_string_literal: true
#
# The SSL pair and server tests of test_pair.rb and test_ssl.rb, run a
# second time with their client (and, in the pair tests, both ends) in
# non-blocking fibers, so that SSLSocket moves its bytes through the fiber
# scheduler (SSLSocket#transport == :scheduler): under
# IO::Uring::Scheduler (#socket_recv/#socket_send) and under the test
# scheduler of test/fiber (#io_read/#io_write).
require_relative 'test_pair'
require_relative 'test_ssl'
require_relative '../fiber/scheduler'
begin
  require 'io/uring'
rescue LoadError
end

# Only where openssl has the scheduler transport (patch 0014).
if defined?(OpenSSL::SSL) && OpenSSL::SSL::SSLContext.method_defined?(:scheduler_transport=)

module OpenSSL::SchedulerRun
  def self.uring_available?
    return false unless defined?(IO::Uring::Scheduler)
    IO::Uring::Scheduler.new.close
    true
  rescue SystemCallError, NotImplementedError
    false
  end

  # Runs the block in a non-blocking fiber of a new thread with a scheduler
  # of the class, and returns or raises what the block did.
  def under_scheduler
    result = error = nil
    klass = scheduler_class
    Thread.new do
      Fiber.set_scheduler(klass.new)
      Fiber.schedule do
        result = yield
      rescue Exception => e
        error = e
      end
    end.join
    raise error if error
    result
  end

  def self.included(klass)
    klass.superclass.public_instance_methods(true).grep(/\Atest_/).each do |name|
      klass.define_method(name) do
        omit "the scheduler is not available here" unless scheduler_available?
        under_scheduler { super() }
      end
    end
  end

  # Both ends in fibers of the test's scheduler: the accepting end in its
  # own fiber, the connecting one in the test's.  (The test scheduler of
  # test/fiber cannot nest Fiber.schedule: the accepting end stays on a
  # thread there.)
  def ssl_pair
    unless both_ends_in_fibers?
      return super { |c, s|
        assert_equal :scheduler, c.transport
        assert_equal :fd, s.transport
        yield c, s
      }
    end
    host = "127.0.0.1"
    tcps = create_tcp_server(host, 0)
    port = tcps.connect_address.ip_port
    accepted = Thread::Queue.new
    Fiber.schedule do
      sctx = OpenSSL::SSL::SSLContext.new
      sctx.cert = @svr_cert
      sctx.key = @svr_key
      sctx.options |= OpenSSL::SSL::OP_NO_COMPRESSION
      ssls = OpenSSL::SSL::SSLServer.new(tcps, sctx)
      accepted << ssls.accept
    rescue Exception => e
      accepted << e
    end
    tcpc = create_tcp_client(host, port)
    c = OpenSSL::SSL::SSLSocket.new(tcpc)
    c.connect
    s = accepted.pop
    raise s if s.is_a?(Exception)
    assert_equal :scheduler, c.transport
    assert_equal :scheduler, s.transport
    yield c, s
  ensure
    tcpc&.close
    tcps&.close
    s&.close if s.respond_to?(:close)
  end

  # The server of test_ssl.rb stays on threads without a scheduler (a
  # peer on the stock transport); the client block runs in a fiber.
  def start_server(**kw, &block)
    super(**kw) { |*args| under_scheduler { block.call(*args) } }
  end
end

module OpenSSL::UringRun
  def scheduler_class = IO::Uring::Scheduler
  def scheduler_available? = OpenSSL::SchedulerRun.uring_available?
  def both_ends_in_fibers? = true
end

module OpenSSL::TestSchedulerRun
  def scheduler_class = IOBufferScheduler
  def scheduler_available? = true
  def both_ends_in_fibers? = false
end

[
  [OpenSSL::TestPair, "Uring", OpenSSL::UringRun],
  [OpenSSL::TestPairLowlevelSocket, "Uring", OpenSSL::UringRun],
  [OpenSSL::TestEOF1, "Uring", OpenSSL::UringRun],
  [OpenSSL::TestEOF2, "Uring", OpenSSL::UringRun],
  [OpenSSL::TestSSL, "Uring", OpenSSL::UringRun],
  [OpenSSL::TestPair, "TestScheduler", OpenSSL::TestSchedulerRun],
  [OpenSSL::TestEOF1, "TestScheduler", OpenSSL::TestSchedulerRun],
].each do |base, suffix, run|
  klass = Class.new(base) do
    include run
    include OpenSSL::SchedulerRun
  end
  OpenSSL.const_set("#{base.name.split("::").last}Under#{suffix}", klass)
end

end
