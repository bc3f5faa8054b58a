// Start methods and contexts (CPython context.py).
#include "mp/context.hpp"

#include <mutex>
#include <stdexcept>

#include "forkserver.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {
namespace {
std::optional<StartMethod> parse(std::string_view m) {
  if (m == "fork") return StartMethod::fork;
  if (m == "spawn") return StartMethod::spawn;
  if (m == "forkserver") return StartMethod::forkserver;
  return std::nullopt;
}
}  // namespace

StartMethod default_start_method() {
  auto& r = runtime();
  std::lock_guard l(r.mu);
  // forkserver: spawn's semantics at close to fork's speed (docs/start-methods.md has the
  // numbers; Python 3.14 made the same choice on Linux).
  if (!r.default_method) r.default_method = kDefaultStartMethod;
  return *r.default_method;
}

void force_default_start_method(StartMethod m) {
  auto& r = runtime();
  std::lock_guard l(r.mu);
  r.default_method = m;
}

std::string context_class_token(StartMethod m) {
  switch (m) {
    case StartMethod::fork:
      return "ForkProcess";
    case StartMethod::spawn:
      return "SpawnProcess";
    case StartMethod::forkserver:
      return "ForkServerProcess";
  }
  return "Process";
}
}  // namespace detail

std::string_view to_string(StartMethod method) {
  switch (method) {
    case StartMethod::fork:
      return "fork";
    case StartMethod::spawn:
      return "spawn";
    case StartMethod::forkserver:
      return "forkserver";
  }
  return "?";
}

void Context::set_start_method(std::string_view, bool) const {
  throw std::logic_error("cannot set start method of concrete context");
}

void Context::bind_to(mp::Process& p) const {
  detail::ProcessState::of(p).method = method_;
}

mp::Process Context::bind(mp::Process p) const {
  auto& s = detail::ProcessState::of(p);
  s.method = method_;
  s.class_token = detail::context_class_token(method_);
  return p;
}

static const Context& context_for(StartMethod m) {
  switch (m) {
    case StartMethod::fork:
      return fork_context;
    case StartMethod::spawn:
      return spawn_context;
    case StartMethod::forkserver:
      return forkserver_context;
  }
  return spawn_context;
}

const Context& get_context(std::optional<std::string_view> method) {
  if (!method) return context_for(detail::default_start_method());
  auto m = detail::parse(*method);
  if (!m) throw std::logic_error("cannot find context for '" + std::string(*method) + "'");
  return context_for(*m);
}

void set_start_method(std::optional<std::string_view> method, bool force) {
  auto& r = detail::runtime();
  {
    std::lock_guard l(r.mu);  // CPython checks this first
    if (r.default_method && !force) throw std::runtime_error("context has already been set");
  }
  std::optional<StartMethod> m;
  if (method) {
    m = detail::parse(*method);
    if (!m) throw std::logic_error("cannot find context for '" + std::string(*method) + "'");
  }
  std::lock_guard l(r.mu);
  if (r.default_method && !force) throw std::runtime_error("context has already been set");
  // As CPython: None with force unsets the default; None without force fixes it.
  r.default_method = m || force ? m : std::optional<StartMethod>(detail::kDefaultStartMethod);
}

std::string get_start_method() {
  return std::string(to_string(detail::default_start_method()));
}

std::optional<std::string> get_start_method(bool allow_none) {
  {
    auto& r = detail::runtime();
    std::lock_guard l(r.mu);
    if (!r.default_method && allow_none) return std::nullopt;
  }
  return get_start_method();
}

std::vector<std::string> get_all_start_methods() {
  std::optional<StartMethod> current;
  {
    auto& r = detail::runtime();
    std::lock_guard l(r.mu);
    current = r.default_method;
  }
  auto first = current.value_or(detail::kDefaultStartMethod);
  std::vector<std::string> out = {std::string(to_string(first))};
  for (auto m : {StartMethod::spawn, StartMethod::fork, StartMethod::forkserver})
    if (m != first) out.emplace_back(to_string(m));
  return out;
}

void set_forkserver_preload(std::vector<void (*)()> hooks) {
  detail::forkserver_set_preload(std::move(hooks));
}

}  // namespace mp
