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
  # i.e. through #block and #unblock.
  #
  # A fiber that leaves early (an exception) drops its job if no worker has
  # taken it yet.  Otherwise the work is running, and it may use memory the
  # fiber owns (blocking_operation_wait's arguments live on its stack, an
  # IO::Buffer#copy writes into the caller's buffer): the worker is
  # interrupted, which stops work that can be stopped, and the fiber waits
  # until the work is over, as a thread doing the work itself would only
  # take the exception then.
  class WorkerPool
    # Raised in a worker whose caller left.
    class Abandoned < Exception; end

    # state: :queued, then :dropped (the caller left first) or :running
    # (a worker took it), then :done; every change under lock.
    Job = Struct.new(:work, :result, :worker, :state, :lock)

    def initialize(size = 4)
      @size = size
      @jobs = Thread::Queue.new
      @threads = []
    end

    def call(work)
      job = Job.new(work, Thread::Queue.new, nil, :queued, Thread::Mutex.new)
      grow if @jobs.num_waiting.zero?
      @jobs << job
      ok, value = job.result.pop
      job = nil
      ok ? value : raise(value)
    ensure
      abandon(job) if job
    end

    def close
      @jobs.close
      @threads.each { |thread| thread.join(1) || thread.kill }
    end

    private

    # The caller leaves before its job finished.
    def abandon(job)
      running = job.lock.synchronize do
        case job.state
        when :queued then job.state = :dropped
        when :running then job.worker.raise(Abandoned)
        end
        job.state == :running
      end
      return unless running

      # Every worker pushes a result once its work is over.  Thread#raise
      # and #kill wait for that; a scheduler's Fiber#raise (a Timeout)
      # cannot be deferred: it is kept and raised once the work is over.
      pending = nil
      Thread.handle_interrupt(Object => :never) do
        job.result.pop
      rescue Exception => error
        pending ||= error
        retry
      end
      raise pending if pending
    end

    def grow
      @threads.select!(&:alive?)
      return if @threads.size >= @size
      @threads << Thread.new do
        # Abandoned only while this job's work runs (the caller raises it
        # under the job's lock, while the state is :running).
        Thread.handle_interrupt(Abandoned => :never) do
          while (job = @jobs.pop)
            run(job) if job.lock.synchronize {
              next false if job.state == :dropped
              job.state = :running
              job.worker = Thread.current
            }
          end
        end
      end
    end

    def run(job)
      begin
        result = [true, Thread.handle_interrupt(Abandoned => :immediate) { job.work.call }]
      rescue Exception => error
        result = [false, error]
      end
      job.lock.synchronize { job.state = :done }
      # One sent after the work returned, before :done: take it here.
      begin
        Thread.handle_interrupt(Abandoned => :immediate) { Thread.pass }
      rescue Abandoned
      end
      job.result << result
    end
  end
  private_constant :WorkerPool
end
