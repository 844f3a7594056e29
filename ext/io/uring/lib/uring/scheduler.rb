# frozen_string_literal: true

class IO::Uring::Scheduler
  # call-seq: address_resolve(hostname) -> array of addresses
  #
  # getaddrinfo(3) blocks: it runs in the worker pool while the fiber waits.
  def address_resolve(hostname)
    workers.call(-> { Addrinfo.getaddrinfo(hostname, nil).map(&:ip_address).uniq })
  end

  # call-seq: blocking_operation_wait(work) -> nil
  #
  # Runs +work+, a blocking operation that may run without the GVL, in the
  # worker pool while the fiber waits.
  def blocking_operation_wait(work)
    workers.call(work)
    nil
  end

  private

  def workers
    @workers ||= WorkerPool.new
  end

  # Called by #close once the loop has finished.
  def close_workers
    @workers&.close
    @workers = nil
  end

  # A few threads (no scheduler of their own) that run blocking work for
  # the scheduler's fibers.  The waiting fiber blocks on a Thread::Queue,
  # i.e. through #block and #unblock.  A fiber that leaves early (an
  # exception) has its job dropped, or its worker killed if it is running,
  # as Thread#kill would stop a thread doing the work itself.
  class WorkerPool
    Job = Struct.new(:work, :result, :worker, :cancelled)

    def initialize(size = 4)
      @size = size
      @jobs = Thread::Queue.new
      @threads = []
    end

    def call(work)
      job = Job.new(work, Thread::Queue.new)
      grow if @jobs.num_waiting.zero?
      @jobs << job
      ok, value = job.result.pop
      job = nil
      ok ? value : raise(value)
    ensure
      if job
        job.cancelled = true
        job.worker&.kill
      end
    end

    def close
      @jobs.close
      @threads.each { |thread| thread.join(1) || thread.kill }
    end

    private

    def grow
      @threads.select!(&:alive?)
      return if @threads.size >= @size
      @threads << Thread.new do
        while (job = @jobs.pop)
          next if job.cancelled
          job.worker = Thread.current
          begin
            job.result << [true, job.work.call]
          rescue Exception => error
            job.result << [false, error]
          ensure
            job.worker = nil
          end
        end
      end
    end
  end
  private_constant :WorkerPool
end
