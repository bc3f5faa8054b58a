// Pinning the two processes of a benchmark (the *_1core and *_2cores cases), shared by
// bench/connection.cpp and bench/sync.cpp.
#pragma once

#include <sched.h>

namespace bench {

// same: the parent on the CPU it runs on, and fork() or mp's fork child inherit that; split: the
// parent on the first CPU it may use, the child (which calls pin_child) on the second.

enum class Pin { none, same, split };

int nth_allowed_cpu(const cpu_set_t& set, int n) {
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set) && n-- == 0) return cpu;
  return -1;
}

void pin_to(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  sched_setaffinity(0, sizeof one, &one);
}

class Pinning {
 public:
  explicit Pinning(Pin pin) : pin_(pin) {
    if (pin_ == Pin::none) return;
    sched_getaffinity(0, sizeof old_, &old_);
    if (pin_ == Pin::same) {
      int cpu = sched_getcpu();
      pin_to(cpu < 0 ? nth_allowed_cpu(old_, 0) : cpu);
    } else {
      child_cpu_ = nth_allowed_cpu(old_, 1);
      if (child_cpu_ >= 0) pin_to(nth_allowed_cpu(old_, 0));
    }
  }
  ~Pinning() {
    if (pin_ != Pin::none) sched_setaffinity(0, sizeof old_, &old_);
  }
  Pinning(const Pinning&) = delete;
  Pinning& operator=(const Pinning&) = delete;
  // False for split on a single CPU.
  bool ok() const { return pin_ != Pin::split || child_cpu_ >= 0; }
  // For the child to pin itself to (-1: stay as inherited).
  int child_cpu() const { return pin_ == Pin::split ? child_cpu_ : -1; }

 private:
  Pin pin_;
  int child_cpu_ = -1;
  cpu_set_t old_{};
};

void pin_child(int cpu) {
  if (cpu >= 0) pin_to(cpu);
}

}  // namespace bench
