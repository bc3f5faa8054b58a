// The SyncManager's served objects that are not templates: the locks, Semaphore, Condition,
// Event, Barrier and Namespace (CPython serves threading's; these also let go of what a dead
// client held, and give up a dead client's waits).
#include "mp/sync_manager.hpp"

#include <algorithm>

#include "mp/synchronize.hpp"
#include "posix/posix.hpp"

namespace mp {

namespace detail {

std::string this_build_id() {
  return posix::build_id();
}

void check_same_build(const std::string& build) {
  if (build != posix::build_id())
    throw PicklingError(
        "a function reference crosses only within the same build: this program is build-id " +
        posix::build_id() + ", the caller's " + build);
}

}  // namespace detail

namespace managed {

namespace {
bool caller_is(std::uint64_t client, std::uint64_t thread) {
  const auto& c = detail::current_call();
  return c.client == client && c.thread == thread;
}
}  // namespace

// ---- Lock, RLock ----

bool Lock::mine() const {
  return count_ > 0 && caller_is(client_, thread_);
}

bool Lock::acquire(bool block, double timeout) {
  Guard l(mu_);
  if (recursive_ && mine()) {
    ++count_;
    return true;
  }
  if (!wait(l, block ? timeout : 0, [&] { return count_ == 0; })) return false;
  const auto& c = detail::current_call();
  client_ = c.client;
  thread_ = c.thread;
  count_ = 1;
  owner_died_ = died_;
  died_ = false;
  return true;
}

void Lock::release() {
  Guard l(mu_);
  if (count_ == 0) throw std::logic_error("release unlocked lock");
  if (recursive_ && !mine())
    throw std::logic_error("attempt to release recursive lock not owned by thread");
  if (--count_ == 0) {
    client_ = thread_ = 0;
    owner_died_ = false;
    wake_all();
  }
}

bool Lock::locked() const {
  Guard l(mu_);
  return count_ > 0;
}

bool Lock::owner_died() const {
  Guard l(mu_);
  return owner_died_ && count_ > 0 && detail::current_call().client == client_;
}

void Lock::mp_client_gone(std::uint64_t client) {
  Guard l(mu_);
  if (count_ > 0 && client_ == client) {
    count_ = 0;
    client_ = thread_ = 0;
    died_ = true;
  }
  wake_all();
}

// ---- Semaphore, BoundedSemaphore ----

Semaphore::Semaphore(std::int64_t value, bool bounded)
    : value_(value), initial_(value), bounded_(bounded) {
  if (value < 0) throw std::invalid_argument("semaphore initial value must be >= 0");
}

bool Semaphore::acquire(bool block, double timeout) {
  Guard l(mu_);
  if (!wait(l, block ? timeout : 0, [&] { return value_ > 0; })) return false;
  --value_;
  return true;
}

void Semaphore::release() {
  Guard l(mu_);
  if (bounded_ && value_ >= initial_)
    throw std::logic_error("semaphore or lock released too many times");
  ++value_;
  wake_all();
}

std::int64_t Semaphore::get_value() const {
  Guard l(mu_);
  return value_;
}

void Semaphore::mp_client_gone(std::uint64_t) {
  Guard l(mu_);
  wake_all();
}

// ---- Condition ----

bool Condition::mine() const {
  return count_ > 0 && caller_is(client_, thread_);
}

bool Condition::take(Guard& l, bool block, double timeout, std::size_t count) {
  if (!Waitable::wait(l, block ? timeout : 0, [&] { return count_ == 0; })) return false;
  const auto& c = detail::current_call();
  client_ = c.client;
  thread_ = c.thread;
  count_ = count;
  return true;
}

bool Condition::acquire(bool block, double timeout) {
  Guard l(mu_);
  if (mine()) {
    ++count_;
    return true;
  }
  return take(l, block, timeout, 1);
}

void Condition::release() {
  Guard l(mu_);
  if (!mine()) throw std::logic_error("cannot release un-acquired lock");
  if (--count_ == 0) {
    client_ = thread_ = 0;
    wake_all();
  }
}

bool Condition::wait(double timeout) {
  Guard l(mu_);
  if (!mine()) throw std::logic_error("must acquire() condition before using wait()");
  const std::size_t levels = count_;
  count_ = 0;
  client_ = thread_ = 0;
  const std::uint64_t ticket = ++next_ticket_;
  waiting_.push_back(ticket);
  wake_all();
  auto waiting = [&] { return std::find(waiting_.begin(), waiting_.end(), ticket); };
  bool notified;
  try {
    notified = Waitable::wait(l, timeout, [&] { return waiting() == waiting_.end(); });
  } catch (...) {
    if (auto it = waiting(); it != waiting_.end()) waiting_.erase(it);
    throw;
  }
  if (auto it = waiting(); it != waiting_.end()) waiting_.erase(it);
  take(l, true, -1, levels);
  return notified;
}

void Condition::notify(std::size_t n) {
  Guard l(mu_);
  if (!mine()) throw std::logic_error("lock is not owned");
  n = std::min(n, waiting_.size());
  waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(n));
  wake_all();
}

void Condition::notify_all() {
  Guard l(mu_);
  if (!mine()) throw std::logic_error("lock is not owned");
  waiting_.clear();
  wake_all();
}

void Condition::mp_client_gone(std::uint64_t client) {
  Guard l(mu_);
  if (count_ > 0 && client_ == client) {
    count_ = 0;
    client_ = thread_ = 0;
  }
  wake_all();
}

// ---- Event ----

void Event::set() {
  Guard l(mu_);
  set_ = true;
  wake_all();
}

void Event::clear() {
  Guard l(mu_);
  set_ = false;
}

bool Event::is_set() const {
  Guard l(mu_);
  return set_;
}

bool Event::wait(double timeout) {
  Guard l(mu_);
  return Waitable::wait(l, timeout, [&] { return set_; });
}

void Event::mp_client_gone(std::uint64_t) {
  Guard l(mu_);
  wake_all();
}

// ---- Barrier ----

Barrier::Barrier(std::size_t parties) : parties_(parties) {
  if (parties < 1) throw std::invalid_argument("parties must be >= 1");
}

void Barrier::break_round(Guard&) {
  round_->broken = true;
  round_ = std::make_shared<Round>();
  count_ = 0;
  broken_ = true;
  wake_all();
}

std::size_t Barrier::wait(double timeout) {
  Guard l(mu_);
  if (broken_) throw BrokenBarrierError();
  const std::size_t index = count_++;
  const std::shared_ptr<Round> round = round_;
  if (count_ == parties_) {
    round->released = true;
    round_ = std::make_shared<Round>();
    count_ = 0;
    wake_all();
    return index;
  }
  bool over;
  try {
    over = Waitable::wait(l, timeout, [&] { return round->released || round->broken; });
  } catch (...) {
    if (round == round_) break_round(l);  // a party that died waiting breaks the round
    throw;
  }
  if (!over && round == round_) break_round(l);  // this party's timeout
  if (round->released) return index;
  throw BrokenBarrierError();
}

void Barrier::reset() {
  Guard l(mu_);
  round_->broken = true;
  round_ = std::make_shared<Round>();
  count_ = 0;
  broken_ = false;
  wake_all();
}

void Barrier::abort() {
  Guard l(mu_);
  break_round(l);
}

std::size_t Barrier::parties() const {
  return parties_;
}

std::size_t Barrier::n_waiting() const {
  Guard l(mu_);
  return count_;
}

bool Barrier::broken() const {
  Guard l(mu_);
  return broken_;
}

void Barrier::mp_client_gone(std::uint64_t) {
  Guard l(mu_);
  wake_all();
}

// ---- Namespace ----

void Namespace::set_raw(const std::string& name, const std::string& type,
                        const std::string& bytes) {
  attributes_[name] = {type, bytes};
}

std::pair<std::string, std::string> Namespace::get_raw(const std::string& name) const {
  auto it = attributes_.find(name);
  if (it == attributes_.end()) throw KeyError("'Namespace' object has no attribute '" + name + "'");
  return it->second;
}

bool Namespace::contains(const std::string& name) const {
  return attributes_.count(name) != 0;
}

void Namespace::erase(const std::string& name) {
  if (!attributes_.erase(name))
    throw KeyError("'Namespace' object has no attribute '" + name + "'");
}

std::vector<std::string> Namespace::names() const {
  std::vector<std::string> out;
  for (const auto& kv : attributes_) out.push_back(kv.first);
  return out;
}

}  // namespace managed

SyncManager Manager(ManagerOptions options) {
  SyncManager m(std::move(options));
  m.start();
  return m;
}

}  // namespace mp
