# frozen_string_literal: true

class IO::Uring::Scheduler
  # call-seq: address_resolve(hostname) -> array of addresses
  #
  # getaddrinfo(3) blocks: it runs in a thread while the fiber waits.
  def address_resolve(hostname)
    offload { Addrinfo.getaddrinfo(hostname, nil).map(&:ip_address).uniq }
  end

  # call-seq: io_select(readables, writables, exceptables, timeout) -> result of IO.select
  def io_select(...)
    offload { IO.select(...) }
  end

  # call-seq: blocking_operation_wait(work) -> nil
  #
  # Runs +work+, a blocking operation that may run without the GVL, in a
  # thread while the fiber waits.
  def blocking_operation_wait(work)
    offload(&work)
    nil
  end

  private

  # Run the block in a thread; the current fiber waits (#block/#unblock).
  # If the fiber leaves early (an exception), the thread is killed.
  def offload(&block)
    thread = Thread.new(&block)
    thread.report_on_exception = false
    value = thread.value
    thread = nil
    value
  ensure
    thread&.kill
  end
end
