# frozen_string_literal: true
#
# Run the ping-pong workloads (bench/pingpong.rb) side by side and report
# medians and ratios.
#
#   ruby bench/run.rb [--runs N] [--groups G] [--iterations I] [--size S]
#                     [--only REGEX]
#
# Uses build/stock/ruby (with the async and io-event gems: bench/setup.sh)
# for the peers and build/ruby for IO::Uring::Scheduler once it exists.
# N runs (default 5) interleaved in this one run: run 1 of every transport
# and case, then run 2, ..., so the figures compare like with like.  Per
# transport, a markdown table: the median wall-clock seconds of the
# exchange (as pingpong.rb times it) and their range; the median CPU seconds
# of the whole child process (user + sys, from Process.times' cutime and
# cstime around Process.spawn and Process.wait2, so the interpreter's start
# and requires are in it) and their range, and that median per round trip;
# the ratio of the baseline's median seconds to the case's (higher is
# faster).  --only selects cases by name (case-insensitive).  Writes the
# medians to bench/results/pingpong.csv and, when gnuplot is installed, a
# chart of them to bench/results/pingpong.png.
require "optparse"
require_relative "lib/stats"
require "fileutils"

top = File.expand_path("..", __dir__)
opts = { runs: 5, groups: 50, iterations: 5000, size: 1024, only: nil }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--groups N", Integer) { |v| opts[:groups] = v }
  o.on("--iterations N", Integer) { |v| opts[:iterations] = v }
  o.on("--size N", Integer) { |v| opts[:size] = v }
  o.on("--only REGEX", "cases whose name matches") { |v| opts[:only] = Regexp.new(v, Regexp::IGNORECASE) }
end.parse!
abort "bench: --runs must be at least 1" if opts[:runs] < 1

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
abort "bench: build the stock ruby first (make stock; bench/setup.sh)" unless File.executable?(stock)
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }

BASELINE = "CRuby test scheduler"
TRANSPORTS = %w[pipe socketpair].freeze
cases = [
  [BASELINE, stock, "test-scheduler"],
  ["Async + io-event EPoll", stock, "async-epoll"],
  ["Async + io-event URing", stock, "async-uring"],
  ["Threads", stock, "threads"],
  ["IO::Uring::Scheduler", patched, "uring"],
]
cases.select! { |name, _, _| name.match?(opts[:only]) } if opts[:only]
abort "bench: --only matches no case" if cases.empty?

Run = Struct.new(:seconds, :cpu, :error)

# One run of pingpong.rb: its seconds and the child's CPU seconds.
def measure(env, ruby, mode, transport, opts)
  args = [ruby, File.join(__dir__, "pingpong.rb"), mode, transport,
          opts[:groups], opts[:iterations], opts[:size]].map(&:to_s)
  out_r, out_w = IO.pipe
  err_r, err_w = IO.pipe
  before = Process.times
  pid = Process.spawn(env, *args, out: out_w, err: err_w)
  out_w.close
  err_w.close
  err = Thread.new { err_r.read }
  out = out_r.read
  _, status = Process.wait2(pid)
  after = Process.times
  cpu = (after.cutime - before.cutime) + (after.cstime - before.cstime)
  err = err.value
  unless status.success?
    tail = err.lines.last(6).join.strip
    return Run.new(nil, nil, tail.empty? ? status.to_s : tail)
  end
  Run.new(Float(out.lines.last), cpu, nil)
rescue ArgumentError, TypeError, SystemCallError => e
  Run.new(nil, nil, "#{e.class}: #{e.message}")
ensure
  [out_r, err_r].each { |io| io&.close unless io&.closed? }
end

keys = TRANSPORTS.product(cases.map(&:first))
rubies = cases.to_h { |name, ruby, mode| [name, [ruby, mode]] }
results = BenchStats.interleave(opts[:runs], keys) do |transport, name|
  measure(env, *rubies[name], transport, opts)
end

round_trips = opts[:groups] * opts[:iterations]
medians = {}
TRANSPORTS.each do |transport|
  puts format("### ping-pong, %s: %d groups x 2 fibers x %d x %d bytes, %d run(s) interleaved",
              transport, opts[:groups], opts[:iterations], opts[:size], opts[:runs])
  puts
  puts "| case | s median | s range | CPU s median | CPU s range | CPU µs/round trip | vs #{BASELINE} |"
  puts "|---|---:|---:|---:|---:|---:|---:|"
  cases.each do |name, _, _|
    runs = results[[transport, name]]
    next if runs.all?(&:error)

    medians[[transport, name]] = [BenchStats.median_of(runs, :seconds), BenchStats.median_of(runs, :cpu)]
  end
  base = medians[[transport, BASELINE]]&.first
  per_round_trip = ->(ok) { format("%.2f", BenchStats.median_of(ok, :cpu) * 1e6 / round_trips) }
  cases.each do |name, _, _|
    puts BenchStats.row(name, results[[transport, name]], %i[seconds cpu], format: "%.3f",
                        base: base, faster: :lower, extra: per_round_trip)
  end
  puts
  puts "(s: wall clock of the exchange; CPU: user + sys of the whole child process, " \
       "start included; ratio: #{BASELINE}'s median seconds over the case's, higher is faster)"
  BenchStats.print_failures(results, keys.select { |t, _| t == transport })
  puts
end

dir = File.join(__dir__, "results")
FileUtils.mkdir_p(dir)
csv = File.join(dir, "pingpong.csv")
File.open(csv, "w") do |f|
  f.puts "case,pipe,socketpair,pipe_cpu,socketpair_cpu"
  cases.each do |name, _, _|
    pipe = medians[["pipe", name]] || []
    pair = medians[["socketpair", name]] || []
    f.puts [name, *[pipe[0], pair[0], pipe[1], pair[1]].map { |v| v && format("%.4f", v) }].join(",")
  end
end
puts "medians: #{csv}"
if system("command -v gnuplot >/dev/null")
  png = File.join(dir, "pingpong.png")
  script = <<~GNUPLOT
    set terminal pngcairo size 900,500
    set output '#{png}'
    set datafile separator ','
    set key autotitle columnhead
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid border -1
    set ylabel 'median seconds, log scale (lower is better)'
    set title 'ping-pong, #{opts[:groups]} groups x #{opts[:iterations]} x #{opts[:size]} B, median of #{opts[:runs]}'
    set xtics rotate by -20
    set logscale y
    plot '#{csv}' using 2:xtic(1), '' using 3
  GNUPLOT
  IO.popen(["gnuplot"], "w") { |io| io.write(script) }
  puts "chart: #{png}"
end
