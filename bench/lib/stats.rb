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

  # The median of +field+ over the +runs+ that went well, or nil.
  def median_of(runs, field)
    values = runs.reject(&:error).map(&field)
    values.empty? ? nil : median(values)
  end

  # A markdown table row for +name+ from its +runs+ (each with #error):
  # the median of each of +fields+ (run methods, or procs of a run) over
  # the runs that went well, and their range, in +format+ (one, or one per
  # field), then the +extra+ column (a proc given those runs), then the
  # ratio of the first field's median to +base+ (its inverse when lower is
  # faster, +faster: :lower+).  A row of "failed" when no run went well.
  def row(name, runs, fields, format: "%.0f", base: nil, faster: :higher, extra: nil)
    ok = runs.reject(&:error)
    if ok.empty?
      return "| #{name} | failed |" + " |" * (fields.size * 2 + (extra ? 1 : 0))
    end
    note = ok.size < runs.size ? " (#{runs.size - ok.size} of #{runs.size} runs failed)" : ""
    cells = fields.each_with_index.flat_map do |field, i|
      f = Array(format)[i] || Array(format).last
      values = ok.map(&field)
      [Kernel.format(f, median(values)), "#{Kernel.format(f, values.min)}–#{Kernel.format(f, values.max)}"]
    end
    cells << extra.call(ok) if extra
    m = median_of(ok, fields.first)
    ratio = base ? Kernel.format("%.2fx", faster == :higher ? m / base : base / m) : "n/a"
    "| #{name}#{note} | #{cells.join(" | ")} | #{ratio} |"
  end

  # Every run of +results+ (key => [run, ...]) in bench/results/NAME, a
  # line per run: the key's parts, the run's number, then what the block
  # makes of the run.  Returns the path.
  def write_csv(name, header, keys, results)
    require "fileutils"
    dir = File.expand_path("../results", __dir__)
    FileUtils.mkdir_p(dir)
    path = File.join(dir, name)
    File.open(path, "w") do |f|
      f.puts header
      keys.each do |key|
        results[key].each_with_index do |r, i|
          f.puts [*Array(key), i + 1, *yield(r)].map { |v| csv_field(v) }.join(",")
        end
      end
    end
    path
  end

  def csv_field(value)
    text = value.to_s
    text.match?(/[",\n]/) ? "\"#{text.gsub('"', '""')}\"" : text
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
