# frozen_string_literal: true
#
# Run the ping-pong workloads side by side and report ratios.
#
#   ruby bench/run.rb [--runs N] [--groups G] [--iterations I] [--size S]
#
# Uses build/stock/ruby (with the async and io-event gems: bench/setup.sh)
# for the peers and build/ruby for IO::Uring::Scheduler once it exists.
# Every case runs N times (best of N) in this one run, so the figures compare
# like with like.  Writes bench/results/pingpong.csv and, when gnuplot is
# installed, bench/results/pingpong.png.
require "optparse"
require "fileutils"

top = File.expand_path("..", __dir__)
opts = { runs: 3, groups: 50, iterations: 5000, size: 1024 }
OptionParser.new do |o|
  o.on("--runs N", Integer) { |v| opts[:runs] = v }
  o.on("--groups N", Integer) { |v| opts[:groups] = v }
  o.on("--iterations N", Integer) { |v| opts[:iterations] = v }
  o.on("--size N", Integer) { |v| opts[:size] = v }
end.parse!

stock = File.join(top, "build/stock/ruby/bin/ruby")
patched = File.join(top, "build/ruby/bin/ruby")
abort "bench: build the stock ruby first (make stock; bench/setup.sh)" unless File.executable?(stock)
env = { "RUBY_TEST_SCHEDULER" => File.join(top, "build/stock/src/test/fiber/scheduler.rb") }

CASES = [
  ["CRuby test scheduler", stock, "test-scheduler"],
  ["Async + io-event EPoll", stock, "async-epoll"],
  ["Async + io-event URing", stock, "async-uring"],
  ["Threads", stock, "threads"],
  ["IO::Uring::Scheduler", patched, "uring"],
].freeze
BASELINE = "CRuby test scheduler"

def measure(env, ruby, mode, transport, opts)
  args = [ruby, File.join(__dir__, "pingpong.rb"), mode, transport,
          opts[:groups], opts[:iterations], opts[:size]].map(&:to_s)
  out = IO.popen(env, args, err: File::NULL, &:read)
  $?.success? ? Float(out.lines.last) : nil
rescue ArgumentError, TypeError
  nil
end

results = {}
%w[pipe socketpair].each do |transport|
  CASES.each do |name, ruby, mode|
    times = opts[:runs].times.map { measure(env, ruby, mode, transport, opts) }
    results[[transport, name]] = times.all? ? times.min : nil
  end
end

puts format("ping-pong, %d groups x 2 fibers x %d x %d bytes, best of %d",
            opts[:groups], opts[:iterations], opts[:size], opts[:runs])
puts format("%-26s %14s %8s %14s %8s", "", "pipe (s)", "ratio", "socketpair (s)", "ratio")
CASES.each do |name, _, _|
  cells = %w[pipe socketpair].flat_map do |transport|
    t = results[[transport, name]]
    base = results[[transport, BASELINE]]
    t ? [format("%.3f", t), format("%.2fx", base / t)] : ["n/a", ""]
  end
  puts format("%-26s %14s %8s %14s %8s", name, *cells)
end
puts "(ratio: speed relative to #{BASELINE}; higher is faster)"

dir = File.join(__dir__, "results")
FileUtils.mkdir_p(dir)
csv = File.join(dir, "pingpong.csv")
File.open(csv, "w") do |f|
  f.puts "case,pipe,socketpair"
  CASES.each { |name, _, _| f.puts [name, results[["pipe", name]], results[["socketpair", name]]].join(",") }
end
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
    set ylabel 'seconds, log scale (lower is better)'
    set title 'ping-pong, #{opts[:groups]} groups x #{opts[:iterations]} x #{opts[:size]} B'
    set xtics rotate by -20
    set logscale y
    plot '#{csv}' using 2:xtic(1), '' using 3
  GNUPLOT
  IO.popen(["gnuplot"], "w") { |io| io.write(script) }
  puts "chart: #{png}"
end
