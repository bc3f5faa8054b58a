// What bench/pool.cpp and bench/managers.cpp print their summaries from: the console output as
// usual, plus each case's median real time (ns) and its counters; and the machine's load.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace bench {

class Collector : public benchmark::ConsoleReporter {
 public:
  Collector() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  std::map<std::string, double> median;
  std::map<std::string, std::map<std::string, double>> counters;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.error_occurred || !(r.run_type == Run::RT_Iteration || r.aggregate_name == "median"))
        continue;
      const std::string name = r.run_name.function_name;
      median[name] = r.GetAdjustedRealTime() * 1e9 / benchmark::GetTimeUnitMultiplier(r.time_unit);
      for (const auto& [k, c] : r.counters) counters[name][k] = c.value;
    }
  }
};

// /proc/loadavg's 1, 5 and 15 minute figures: the machine may be shared, so say how busy it was.
inline std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

}  // namespace bench
