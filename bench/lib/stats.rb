# frozen_string_literal: true
#
# What the benchmarks share: contenders run interleaved (run 1 of each,
# then run 2 of each, ...), so a noisy moment hits every contender alike,
# and are reported as median and range, never best-of-N.

module BenchStats
  module_function

  def median(values)
    s = values.sort
    s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0
  end

  # Calls the block with each key, +runs+ times over, interleaved; collects
  # what it returns (something with #error, nil when the run went well) per
  # key, and prints a dot (or an x for a failed run) per run on stderr.
  def interleave(runs, keys)
    results = Hash.new { |h, k| h[k] = [] }
    runs.times do
      keys.each do |key|
        r = yield(key)
        results[key] << r
        $stderr.print(r.error ? "x" : ".")
      end
    end
    $stderr.puts
    results
  end

  # The failed runs of +results+ (key => [run, ...]) for +names+, each with
  # the end of what it said.
  def print_failures(results, keys)
    keys.each do |key|
      results[key].each_with_index do |r, i|
        next unless r.error
        puts
        puts "failed: #{Array(key).reverse.join(", ")}, run #{i + 1}:"
        puts r.error.lines.map { |l| "    #{l.chomp}" }
      end
    end
  end
end
