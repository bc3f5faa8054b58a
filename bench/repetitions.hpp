// How often every benchmark runs, in one place for all of bench/: repetitions reported as their
// median with the min and max beside it (tools/report.py draws the spread from those two), and a
// smoke mode (MP_BENCH_SMOKE=1 in the environment, as `sh tools/report.sh --smoke` sets it) that
// runs each case once or twice, briefly, so that CI sees every case run and print its tables
// without paying for a measurement. A case's MinTime, Repetitions and Iterations set in the code
// win over the --benchmark_* flags in Google Benchmark, so the smoke mode has to be applied here,
// where they are set, and not on the command line.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace bench {

inline bool smoke() {
  static const bool on = [] {
    const char* v = std::getenv("MP_BENCH_SMOKE");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

// min and max next to Google Benchmark's mean, median, stddev and cv aggregates (applied to the
// times and to every counter alike).
inline benchmark::internal::Benchmark* with_spread(benchmark::internal::Benchmark* b) {
  return b
      ->ComputeStatistics("min",
                          [](const std::vector<double>& v) {
                            return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
                          })
      ->ComputeStatistics("max", [](const std::vector<double>& v) {
        return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
      });
}

// `reps` repetitions of at least `min_time` seconds each; in smoke mode 2 short ones (two, so
// that the aggregates are computed and reported as in a full run).
inline benchmark::internal::Benchmark* repeat(benchmark::internal::Benchmark* b, double min_time,
                                              int reps) {
  return with_spread(b)
      ->MinTime(smoke() ? 1e-3 : min_time)
      ->Repetitions(smoke() ? 2 : reps)
      ->ReportAggregatesOnly();
}

// The same for a case that fixes its iterations per repetition (one iteration is a whole
// measurement: 100k tasks, a batch of kills); one iteration in smoke mode.
inline benchmark::internal::Benchmark* repeat_iterations(benchmark::internal::Benchmark* b,
                                                         benchmark::IterationCount iterations,
                                                         int reps) {
  return with_spread(b)
      ->Iterations(smoke() ? 1 : iterations)
      ->Repetitions(smoke() ? 2 : reps)
      ->ReportAggregatesOnly();
}

// A size to sweep over in a full run; smoke mode keeps only the first few of a sweep (in smoke
// mode a sweep still runs, but not up to its gigabytes).
inline bool in_sweep(std::size_t index, std::size_t smoke_count = 2) {
  return !smoke() || index < smoke_count;
}

}  // namespace bench
