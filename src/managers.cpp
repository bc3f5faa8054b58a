// Managers (CPython managers.py: Server, BaseManager, BaseProxy), our own wire format.
//
// A connection carries frames, each a Connection message: [u64 call id][u8 op or status] and a
// body in our archive format. Requests: create (registered name, type key, constructor key,
// then the constructor's arguments), call (object id, method name, then the method's
// arguments), release (object id; no reply), shutdown. Replies: ok (the result's bytes), a
// method's error (type and what()), or a manager error (unknown type, object or method).
//
// Server: one thread accepts; each connection has a thread of its own, which runs the
// authentication handshake (a peer that stalls holds up nobody else) and then its requests.
// Each object has a mutex, held across a call of one of its methods. The references a
// connection holds are dropped when it closes, however its process ended.
//
// Client: one Session per server per process, shared by every proxy. A caller sends its
// request and waits for its reply; the first waiter reads the connection for all of them
// (no reader thread: a lone caller reads its own reply, no hand-off).
#include "mp/managers.hpp"

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "auth.hpp"
#include "exception_info.hpp"
#include "posix/posix.hpp"
#include "posix/socket.hpp"

#include <cereal/types/utility.hpp>

namespace mp {
namespace detail {

namespace {

enum Code : std::uint8_t {
  kCreate = 1,
  kCall = 2,
  kRelease = 3,
  kShutdown = 4,
  kCount = 5,
  kOk = 10,
  kMethodError = 11,
  kManagerError = 12,
};
constexpr std::size_t kHead = 9;
constexpr std::size_t kMaxRequest = 64u << 20;  // a request or reply longer than this is refused

std::string frame(std::uint64_t id, std::uint8_t code, std::string_view body) {
  std::string f(kHead + body.size(), '\0');
  std::memcpy(f.data(), &id, 8);
  f[8] = static_cast<char>(code);
  std::memcpy(f.data() + kHead, body.data(), body.size());
  return f;
}

std::string address_text(const Address& a) {
  std::ostringstream os;
  os << a;
  return os.str();
}

std::map<std::string, const TypeOps*>& type_table() {
  static std::map<std::string, const TypeOps*> t;
  return t;
}
struct ConstructorEntry {
  std::string type_key;
  void* (*make)(reduction::InArchive&);
};
std::map<std::string, ConstructorEntry>& constructor_table() {
  static std::map<std::string, ConstructorEntry> t;
  return t;
}
std::mutex& tables_mu() {
  static std::mutex m;
  return m;
}

}  // namespace

bool register_type_ops(const TypeOps* ops) {
  std::lock_guard l(tables_mu());
  type_table()[ops->key] = ops;
  return true;
}

bool register_constructor(const char* key, const char* type_key,
                          void* (*make)(reduction::InArchive&)) {
  std::lock_guard l(tables_mu());
  constructor_table()[key] = {type_key, make};
  return true;
}

// ---- the server ----
//
// Requests: (frames of) create, call, release, shutdown, count; see the top of the file.

struct ServerSpec {
  bool tcp = false;
  std::string path_or_host;
  int port = 0;
  bool has_address = false;
  std::vector<std::pair<std::string, std::string>> types;  // name, type key
  template <class A>
  void serialize(A& ar) {
    ar(tcp, path_or_host, port, has_address, types);
  }
};

namespace {

std::optional<Address> address_of(const ServerSpec& s) {
  if (!s.has_address) return std::nullopt;
  if (s.tcp) return Address(std::pair<std::string, int>(s.path_or_host, s.port));
  return Address(s.path_or_host);
}

class Server {
 public:
  Server(const ServerSpec& spec, AuthenticationString authkey)
      : listener_(address_of(spec), std::nullopt, 64), authkey_(std::move(authkey)) {
    std::lock_guard l(tables_mu());
    for (const auto& [name, key] : spec.types) {
      auto it = type_table().find(key);
      if (it == type_table().end())
        throw ManagerError("the type registered as '" + name + "' is not in this program");
      types_[name] = it->second;
    }
    auto [r, w] = posix::make_socketpair();
    wake_r_ = std::move(r);
    wake_w_ = std::move(w);
  }

  ~Server() {
    {
      // Wakes the connections' threads; a finished one has closed its descriptor (under this
      // lock), so no number here can be another's by now.
      std::lock_guard l(mu_);
      for (auto& [fd, t] : threads_)
        if (!finished_.count(fd)) posix::shutdown_both(fd);
    }
    for (auto& [fd, t] : threads_) t.join();
    for (auto& [id, o] : objects_) o->ops->destroy(o->p);
  }

  const Address& address() const { return listener_.address(); }

  void serve_forever() {
    for (;;) {
      posix::PollFd fds[2] = {{listener_.fileno()}, {wake_r_.get()}};
      posix::poll_fds(fds, std::nullopt);
      if (fds[1].readable) break;
      if (!fds[0].readable) continue;
      std::string host;
      int port = -1;
      int fd = -1;
      try {
        fd = posix::accept_connection(listener_.fileno(), host, port);
      } catch (const std::exception&) {
        continue;  // the peer went before it was accepted
      }
      std::lock_guard l(mu_);
      reap_finished();
      threads_.emplace_back(fd, std::thread([this, fd] { serve_connection(fd); }));
    }
  }

 private:
  struct Object {
    const TypeOps* ops;
    void* p;
    std::mutex call_mu;
    std::size_t refs = 0;
  };

  void reap_finished() {
    for (auto it = threads_.begin(); it != threads_.end();) {
      if (finished_.count(it->first)) {
        it->second.join();
        finished_.erase(it->first);
        it = threads_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void stop() {
    const char c = 0;
    (void)posix::send_nowait(wake_w_.get(), std::as_bytes(std::span(&c, 1)));
  }

  void serve_connection(int fd) {
    std::map<std::uint64_t, std::size_t> held;  // this connection's references
    Connection conn(fd, true, true);
    try {
      const auto deadline = std::chrono::steady_clock::now() + kHandshakeTimeout;
      deliver_challenge(fd, authkey_, deadline);
      answer_challenge(fd, authkey_, deadline);
      for (;;) {
        std::string request = conn.recv_bytes(kMaxRequest);
        if (request.size() < kHead) throw ManagerError("a request shorter than its header");
        std::uint64_t id;
        std::memcpy(&id, request.data(), 8);
        const auto op = static_cast<std::uint8_t>(request[8]);
        std::string_view body(request.data() + kHead, request.size() - kHead);
        if (op == kRelease) {
          release(body, held);
          continue;
        }
        std::string reply_body;
        std::uint8_t code = kOk;
        try {
          if (op == kCreate)
            reply_body = create(body, held);
          else if (op == kCall)
            reply_body = call(body);
          else if (op == kShutdown)
            reply_body = {};
          else if (op == kCount)
            reply_body = count();
          else
            throw ManagerError("unknown request " + std::to_string(op));
        } catch (const ManagerError& e) {
          code = kManagerError;
          reply_body = e.what();
        } catch (...) {
          code = kMethodError;
          std::string out;
          reduction::OutArchive ar(out);
          ar(exception_type(), exception_what());
          reply_body = std::move(out);
        }
        conn.send_bytes(frame(id, code, reply_body));
        if (op == kShutdown) {
          stop();
          break;
        }
      }
    } catch (...) {
      // EOF, a failed handshake, a malformed frame: this connection ends, the others go on.
    }
    for (const auto& [id, n] : held) drop(id, n);
    std::lock_guard l(mu_);
    conn.close();
    finished_.insert(fd);
  }

  std::string create(std::string_view body, std::map<std::uint64_t, std::size_t>& held) {
    reduction::InArchive in(body);
    std::string name, type_key, ctor_key;
    in(name, type_key, ctor_key);
    auto t = types_.find(name);
    if (t == types_.end()) throw ManagerError("no type is registered as '" + name + "'");
    if (type_key != t->second->key)
      throw ManagerError("'" + name + "' is registered here as another type (" +
                         t->second->display + ")");
    void* (*make)(reduction::InArchive&) = nullptr;
    {
      std::lock_guard l(tables_mu());
      auto c = constructor_table().find(ctor_key);
      if (c == constructor_table().end() || c->second.type_key != type_key)
        throw ManagerError("no such constructor of " + t->second->display +
                           " in the server's program (a client of another build?)");
      make = c->second.make;
    }
    auto o = std::make_unique<Object>();
    o->ops = t->second;
    o->p = make(in);  // a constructor's exception is the caller's error
    o->refs = 1;
    std::lock_guard l(mu_);
    const std::uint64_t id = ++next_id_;
    objects_[id] = std::move(o);
    ++held[id];
    std::string out;
    reduction::OutArchive ar(out);
    ar(id);
    return out;
  }

  std::string count() {
    std::string out;
    reduction::OutArchive ar(out);
    std::lock_guard l(mu_);
    ar(std::uint64_t(objects_.size()));
    return out;
  }

  std::string call(std::string_view body) {
    reduction::InArchive in(body);
    std::uint64_t id;
    std::string method;
    in(id, method);
    Object* o;
    {
      std::lock_guard l(mu_);
      auto it = objects_.find(id);
      if (it == objects_.end()) throw ManagerError("no object " + std::to_string(id));
      o = it->second.get();
    }
    const MethodEntry* m = nullptr;
    for (std::size_t i = 0; i < o->ops->method_count; ++i)
      if (method == o->ops->methods[i].name) m = &o->ops->methods[i];
    if (!m) throw ManagerError(o->ops->display + " has no served method '" + method + "'");
    std::string out;
    std::lock_guard l(o->call_mu);
    m->invoke(o->p, in, out);
    return out;
  }

  void release(std::string_view body, std::map<std::uint64_t, std::size_t>& held) {
    reduction::InArchive in(body);
    std::uint64_t id;
    in(id);
    auto h = held.find(id);
    if (h == held.end()) return;  // not this connection's: ignored
    if (--h->second == 0) held.erase(h);
    drop(id, 1);
  }

  // The object goes with its last reference (its destructor runs outside the table's lock).
  void drop(std::uint64_t id, std::size_t n) {
    std::unique_ptr<Object> gone;
    {
      std::lock_guard l(mu_);
      auto it = objects_.find(id);
      if (it == objects_.end()) return;
      it->second->refs -= std::min(n, it->second->refs);
      if (it->second->refs == 0) {
        gone = std::move(it->second);
        objects_.erase(it);
      }
    }
    if (gone) {
      std::lock_guard l(gone->call_mu);  // a call in flight on another connection ends first
      gone->ops->destroy(gone->p);
    }
  }

  Listener listener_;
  AuthenticationString authkey_;
  std::map<std::string, const TypeOps*> types_;
  posix::unique_fd wake_r_, wake_w_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Object>> objects_;
  std::uint64_t next_id_ = 0;
  std::vector<std::pair<int, std::thread>> threads_;
  std::set<int> finished_;
};

}  // namespace

// The server child's main: binds, says where, serves.
void manager_server_main(ServerSpec spec, AuthenticationString authkey, Connection ready) {
  std::unique_ptr<Server> server;
  try {
    server = std::make_unique<Server>(spec, std::move(authkey));
  } catch (const std::exception& e) {
    ready.send(std::string("E") + e.what());
    return;
  }
  ready.send("A" + address_text(server->address()));
  const Address& a = server->address();
  if (auto* tcp = std::get_if<std::pair<std::string, int>>(&a))
    ready.send(std::to_string(tcp->second));
  ready.close();
  server->serve_forever();
}

// ---- the client ----

class Session {
 public:
  Session(Address address, Connection conn)
      : address_(std::move(address)), conn_(std::move(conn)), pid_(posix::getpid()) {}

  int pid() const { return pid_; }

  // Sends a request and waits for its reply's body; throws as the reply says.
  std::string call(std::uint8_t op, const std::string& body) {
    Slot slot;
    std::unique_lock l(mu_);
    if (!dead_.empty()) throw ManagerError(dead_);
    const std::uint64_t id = ++next_id_;
    waiting_[id] = &slot;
    l.unlock();
    send(frame(id, op, body));
    l.lock();
    while (!slot.done && dead_.empty()) {
      if (reading_) {
        cv_.wait(l);
        continue;
      }
      reading_ = true;
      l.unlock();
      std::string reply;
      std::string failure;
      try {
        reply = conn_.recv_bytes(kMaxRequest);
        if (reply.size() < kHead) failure = "a reply shorter than its header";
      } catch (const std::exception& e) {
        failure = e.what();
      }
      l.lock();
      reading_ = false;
      if (!failure.empty()) {
        dead_ = "the manager's server at " + address_text(address_) +
                " is gone (its objects with it): " + failure;
      } else {
        std::uint64_t rid;
        std::memcpy(&rid, reply.data(), 8);
        auto it = waiting_.find(rid);
        if (it != waiting_.end()) {
          it->second->code = static_cast<std::uint8_t>(reply[8]);
          it->second->body = reply.substr(kHead);
          it->second->done = true;
        }
      }
      cv_.notify_all();
    }
    waiting_.erase(id);
    if (!slot.done) throw ManagerError(dead_);
    l.unlock();
    if (slot.code == kOk) return std::move(slot.body);
    if (slot.code == kMethodError) {
      reduction::InArchive in(slot.body);
      std::string type, message;
      in(type, message);
      throw RemoteError(type, message, server_pid_, 0);
    }
    throw ManagerError(slot.body);
  }

  // A request with no reply (a release); errors ignored: a gone server has released it all.
  void post(std::uint8_t op, const std::string& body) noexcept {
    try {
      send(frame(0, op, body));
    } catch (...) {
    }
  }

  void set_server_pid(int pid) { server_pid_ = pid; }

 private:
  struct Slot {
    bool done = false;
    std::uint8_t code = 0;
    std::string body;
  };

  void send(const std::string& f) {
    std::lock_guard l(send_mu_);
    try {
      conn_.send_bytes(f);
    } catch (const std::exception& e) {
      std::lock_guard m(mu_);
      if (dead_.empty())
        dead_ = "the manager's server at " + address_text(address_) +
                " is gone (its objects with it): " + e.what();
      cv_.notify_all();
      throw ManagerError(dead_);
    }
  }

  Address address_;
  Connection conn_;
  int pid_;
  int server_pid_ = 0;
  std::mutex send_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool reading_ = false;
  std::string dead_;
  std::uint64_t next_id_ = 0;
  std::unordered_map<std::uint64_t, Slot*> waiting_;
};

ObjectRef::~ObjectRef() {
  if (!session || session->pid() != posix::getpid()) return;  // a fork child's copy: not its own
  std::string body;
  reduction::OutArchive ar(body);
  ar(id);
  session->post(kRelease, body);
}

std::string call_method(const ObjectRef& ref, const char* method, const std::string& args) {
  if (ref.session->pid() != posix::getpid())
    throw ManagerError("a proxy inherited through fork cannot be used in the child");
  std::string body;
  reduction::OutArchive ar(body);
  ar(ref.id, std::string(method));
  body += args;
  return ref.session->call(kCall, body);
}

std::shared_ptr<ObjectRef> create_object(const std::shared_ptr<Session>& session,
                                         const std::string& name, const char* type_key,
                                         const char* constructor_key, const std::string& args) {
  std::string body;
  reduction::OutArchive ar(body);
  ar(name, std::string(type_key), std::string(constructor_key));
  body += args;
  std::string reply = session->call(kCreate, body);
  auto ref = std::make_shared<ObjectRef>();
  reduction::InArchive in(reply);
  in(ref->id);
  ref->session = session;
  return ref;
}

}  // namespace detail

// ---- BaseManager ----

struct BaseManager::State {
  ManagerOptions options;
  AuthenticationString authkey;
  std::vector<std::pair<std::string, std::string>> types;
  std::optional<Address> address;
  std::optional<Process> server;
  std::shared_ptr<detail::Session> session;
  bool shut = false;
};

namespace {
bool is_tcp(const std::optional<Address>& a) {
  return a && std::holds_alternative<std::pair<std::string, int>>(*a);
}
}  // namespace

BaseManager::BaseManager(ManagerOptions options) : s_(std::make_unique<State>()) {
  s_->authkey = options.authkey ? *options.authkey : current_process().authkey();
  if (is_tcp(options.address) && s_->authkey.size() == 0)
    throw std::invalid_argument(
        "a manager over TCP needs an authkey (CPython allows none: anyone who can reach the "
        "port could then call the served methods)");
  s_->address = options.address;
  s_->options = std::move(options);
}

BaseManager::~BaseManager() {
  try {
    shutdown();
  } catch (...) {
  }
}

void BaseManager::register_key(std::string name, const char* key) {
  if (s_->server || s_->session)
    throw std::logic_error("register_type() comes before start() or connect()");
  for (auto& [n, k] : s_->types)
    if (n == name) {
      k = key;
      return;
    }
  s_->types.emplace_back(std::move(name), key);
}

const std::string& BaseManager::name_of(const char* key) const {
  for (const auto& [n, k] : s_->types)
    if (k == key) return n;
  throw std::logic_error("create<T>(): T is not registered with this manager (register_type<T>)");
}

const Address& BaseManager::address() const {
  if (!s_->address) throw std::logic_error("the manager has no address yet (start() it)");
  return *s_->address;
}

namespace {
detail::ServerSpec spec_of(const std::optional<Address>& a,
                           const std::vector<std::pair<std::string, std::string>>& types) {
  detail::ServerSpec spec;
  spec.types = types;
  if (a) {
    spec.has_address = true;
    if (auto* tcp = std::get_if<std::pair<std::string, int>>(&*a)) {
      spec.tcp = true;
      spec.path_or_host = tcp->first;
      spec.port = tcp->second;
    } else {
      spec.path_or_host = std::get<std::string>(*a);
    }
  }
  return spec;
}
}  // namespace

void BaseManager::start() {
  if (s_->server) throw ProcessError("Already started server");
  auto [r, w] = Pipe(false);
  const Context& ctx = s_->options.context ? *s_->options.context : get_context();
  Process p = ctx.Process(detail::manager_server_main, spec_of(s_->address, s_->types), s_->authkey,
                          std::move(w));
  p.start();
  s_->server.emplace(std::move(p));
  std::string said;
  try {
    if (!r.poll(std::chrono::seconds(60)))
      throw ManagerError("the manager's server did not start within 60 s");
    said = r.recv<std::string>();
  } catch (const EOFError&) {
    s_->server->join();
    throw ManagerError("the manager's server exited before it served (exit code " +
                       std::to_string(s_->server->exitcode().value_or(-1)) + ")");
  }
  if (said.empty() || said[0] != 'A') {
    s_->server->join();
    throw ManagerError("the manager's server could not start: " + said.substr(1));
  }
  if (is_tcp(s_->address)) {
    auto host = std::get<std::pair<std::string, int>>(*s_->address).first;
    s_->address = Address(std::pair<std::string, int>(host, std::stoi(r.recv<std::string>())));
  } else if (!s_->address) {
    s_->address = Address(said.substr(1));
  }
  connect();
  s_->session->set_server_pid(s_->server->pid().value_or(0));
}

void BaseManager::connect() {
  if (!s_->address) throw std::logic_error("connect() needs the server's address");
  auto conn = Client(*s_->address, ClientOptions{.authkey = s_->authkey});
  s_->session = std::make_shared<detail::Session>(*s_->address, std::move(conn));
}

std::size_t BaseManager::number_of_objects() {
  std::string reply = session()->call(detail::kCount, {});
  std::uint64_t n = 0;
  reduction::InArchive in(reply);
  in(n);
  return n;
}

std::shared_ptr<detail::Session> BaseManager::session() {
  if (!s_->session) throw std::logic_error("the manager is not started or connected");
  if (s_->session->pid() != posix::getpid())
    throw ManagerError("a manager inherited through fork cannot be used in the child");
  return s_->session;
}

void BaseManager::serve_forever() {
  detail::Server server(spec_of(s_->address, s_->types), s_->authkey);
  s_->address = server.address();
  server.serve_forever();
}

void BaseManager::shutdown() {
  if (!s_->server || s_->shut) return;
  s_->shut = true;
  if (s_->session) {
    try {
      s_->session->call(detail::kShutdown, {});
    } catch (...) {
      // already gone
    }
  }
  s_->server->join(std::chrono::seconds(1));
  if (!s_->server->exitcode()) {
    s_->server->terminate();
    s_->server->join(std::chrono::seconds(1));
    if (!s_->server->exitcode()) s_->server->kill();
    s_->server->join();
  }
}

}  // namespace mp
