// Managers (CPython managers.py: Server, BaseManager, BaseProxy), our own wire format.
//
// After the handshake a connection carries frames (frames.hpp: length, call id, op or status)
// whose bodies are in our archive format. Requests: create (registered name, type key, constructor
// key, then the constructor's arguments), call (object id, method name, then the method's
// arguments), release (object id; no reply), shutdown. Replies: ok (the result's bytes), a
// method's error (type and what()), or a manager error (unknown type, object or method).
//
// Server: one thread accepts; each connection has a thread of its own, which runs the
// authentication handshake (a peer that stalls holds up nobody else) and then its requests:
// all that one read brought, their replies written together once they are served.
// Each object has a mutex, held across a call of one of its methods. The references a
// connection holds are dropped when it closes, however its process ended.
//
// Client: one Session per server per process, shared by every proxy. A caller sends its
// request and waits for its reply; the first waiter reads the connection for all of them
// (no reader thread: a lone caller reads its own reply, no hand-off).
#include "mp/managers.hpp"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "auth.hpp"
#include "exception_info.hpp"
#include "frames.hpp"
#include "manager_requests.hpp"
#include "mp/synchronize.hpp"
#include "posix/futex.hpp"
#include "posix/posix.hpp"
#include "posix/socket.hpp"
#include "runtime.hpp"

#include <cereal/types/utility.hpp>

namespace mp {
namespace detail {

namespace {

// This process's pid without a system call per manager call (cached per thread, forgotten in
// a fork child).
int own_pid() {
  return posix::this_thread_identity().pid;
}

enum Code : std::uint8_t {
  kCreate = 1,
  kCall = 2,
  kRelease = 3,
  kShutdown = 4,
  kCount = 5,
  kIncref = 6,  // a reference held for a receiver (object id, token)
  kAttach = 7,  // a receiver takes that reference, or a new one (object id, token)
  kOk = 10,
  kMethodError = 11,
  kManagerError = 12,
};
constexpr std::size_t kMaxRequest = 64u << 20;  // a request or reply longer than this is refused
// Replies waiting for the end of their burst of requests, and a client's async requests waiting
// in its outbox, are written once they reach this.
constexpr std::size_t kReplyBatch = 64u << 10;
// How long a server thread looks for its client's next request, and a caller for its reply,
// before sleeping: a client that calls in a loop sends again within microseconds, and waking a
// sleeping thread on another CPU costs tens of them on a VM (a blocking round trip here
// ~70 us, ~8 us when both ends look). As mp::Queue's blocked get.
constexpr auto kSpin = std::chrono::microseconds(30);
// How long a burst of async calls waits for a caller to read their replies before the
// session's reader thread reads them (a future's callbacks are that much later at most).
constexpr auto kReaderGrace = std::chrono::microseconds(200);
constexpr auto kReaderGraceMax = std::chrono::milliseconds(10);  // while callers keep reading
using Clock = std::chrono::steady_clock;

void write_frames(int fd, std::string_view frames) {
  const std::span<const std::byte> parts[] = {std::as_bytes(std::span(frames))};
  posix::write_all(fd, parts, true);
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

// Threads for the calls of concurrent types (which may block): one per call in flight, kept
// for the next once idle, so a Lock's acquire waiting here holds up no other call.
class CallThreads {
 public:
  ~CallThreads() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(std::function<void()> job) {
    std::lock_guard l(mu_);
    jobs_.push_back(std::move(job));
    if (jobs_.size() > idle_)
      threads_.emplace_back([this] { loop(); });
    else
      cv_.notify_one();
  }

 private:
  void loop() {
    std::unique_lock l(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      l.unlock();
      job();
      l.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::size_t idle_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

thread_local CallContext tls_call;

}  // namespace

const CallContext& current_call() {
  return tls_call;
}

bool CallContext::client_gone() const {
  if (gone && gone->load(std::memory_order_acquire)) return true;
  return fd >= 0 && posix::peer_hung_up(fd);
}

namespace {

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
    objects_.clear();
  }

  const Address& address() const { return listener_.address(); }

  // Until shutdown, or until `parent_sentinel` (when given) says the process that started the
  // server ended: a server nobody owns any more would otherwise serve forever.
  void serve_forever(int parent_sentinel = -1) {
    for (;;) {
      posix::PollFd fds[3] = {{listener_.fileno()}, {wake_r_.get()}, {parent_sentinel}};
      posix::poll_fds(std::span(fds, parent_sentinel >= 0 ? 3 : 2), std::nullopt);
      if (fds[1].readable || fds[2].readable) break;
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
  // An object and what serves it; it goes with the last call or reference holding it.
  struct Object {
    Object(const TypeOps* o, void* q) : ops(o), p(q) {}
    Object(const Object&) = delete;
    Object& operator=(const Object&) = delete;
    const TypeOps* ops;
    void* p;
    std::mutex call_mu;  // held across a call, unless the type is concurrent
    std::size_t refs = 0;
    ~Object() { ops->destroy(p); }
  };

  // One connection: a client process.
  struct Client {
    explicit Client(int fd) : conn(fd, true, true) {}
    Connection conn;
    std::uint64_t id = 0;
    std::atomic<bool> gone{false};
    std::mutex send_mu;
    std::string outbox;    // replies not written yet (under send_mu)
    bool holding = false;  // more requests of this burst to serve: the replies wait for them
    std::mutex inflight_mu;
    std::condition_variable inflight_cv;
    std::size_t inflight = 0;  // calls running on CallThreads

    // A reply, written now or with the rest of its burst's (a call thread's reply to a
    // blocking call goes with them when it comes during one).
    void reply(std::uint64_t call, std::uint8_t code, std::string_view body) {
      std::lock_guard l(send_mu);
      if (gone.load()) return;
      append_frame(outbox, call, code, body);
      if (!holding || outbox.size() >= kReplyBatch) flush();
    }
    void hold(bool on) {
      std::lock_guard l(send_mu);
      holding = on;
      if (!on) flush();
    }

   private:
    void flush() {
      if (outbox.empty()) return;
      try {
        write_frames(conn.fileno(), outbox);
      } catch (...) {
        // the client is going: its reader sees EOF and ends the connection
      }
      outbox.clear();
    }
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

  // Runs one request (not a release) and says how it went: the reply's code and body.
  std::pair<std::uint8_t, std::string> answer(std::uint8_t op, std::string_view body,
                                              std::map<std::uint64_t, std::size_t>& held,
                                              const std::shared_ptr<Object>& object,
                                              reduction::InArchive* args, const MethodEntry* method,
                                              std::uint64_t client = 0) {
    try {
      if (op == kCall) {
        std::string out;
        if (object->ops->concurrent) {
          method->invoke(object->p, *args, out);
        } else {
          std::lock_guard l(object->call_mu);
          method->invoke(object->p, *args, out);
        }
        return {kOk, std::move(out)};
      }
      if (op == kCreate) return {kOk, create(body, held)};
      if (op == kShutdown) return {kOk, {}};
      if (op == kIncref) return {kOk, incref(body, client)};
      if (op == kAttach) return {kOk, attach(body, held)};
      if (op == kCount) return {kOk, count()};
      throw ManagerError("unknown request " + std::to_string(op));
    } catch (const ManagerError& e) {
      return {kManagerError, e.what()};
    } catch (...) {
      std::string out;
      reduction::OutArchive ar(out);
      ar(exception_type(), exception_what(), own_pid());
      return {kMethodError, std::move(out)};
    }
  }

  void serve_connection(int fd) {
    std::map<std::uint64_t, std::size_t> held;  // this connection's references
    auto client = std::make_shared<Client>(fd);
    {
      std::lock_guard l(mu_);
      client->id = ++next_client_;
    }
    try {
      const auto deadline = std::chrono::steady_clock::now() + kHandshakeTimeout;
      deliver_challenge(fd, authkey_, deadline);
      answer_challenge(fd, authkey_, deadline);
      FrameReader requests(kMaxRequest, "the manager's server");
      Awake serving(awake_, 1);
      for (;;) {
        if (auto f = requests.next()) {
          if (!serve_request(client, f->id, f->code, f->payload, held)) break;
          continue;
        }
        client->hold(false);  // the burst is served: its replies go together
        // Looking for the next request spares a wake-up, but only while no other connection is
        // being served: on a busy server the looking takes a CPU that a client or another
        // connection's thread needs (2 clients on 2 CPUs: ~85 k calls/s looking, ~108 k not).
        std::optional<std::size_t> n;
        if (awake_.load(std::memory_order_relaxed) == 1)
          n = posix::recv_spinning(fd, requests.space(), kSpin);
        if (!n) {
          Awake sleeping(awake_, -1);
          n = posix::recv_some(fd, requests.space());
        }
        if (*n == 0) break;
        requests.commit(*n);
        client->hold(true);
      }
    } catch (...) {
      // EOF, a failed handshake, a malformed frame: this connection ends, the others go on.
    }
    end_client(*client, held);
    std::lock_guard l(mu_);
    client->conn.close();
    finished_.insert(fd);
  }

  // One request of a client's; false once it asked the server to shut down.
  bool serve_request(const std::shared_ptr<Client>& client, std::uint64_t id, std::uint8_t op,
                     std::string_view body, std::map<std::uint64_t, std::size_t>& held) {
    if (op == kRelease) {
      release(body, held);
      return true;
    }
    if (op == kCall) {
      serve_call(client, id, body);
      return true;
    }
    auto [code, reply] = answer(op, body, held, nullptr, nullptr, nullptr, client->id);
    client->reply(id, code, reply);
    if (op != kShutdown) return true;
    client->hold(false);
    stop();
    return false;
  }

 public:
  // The request decoder's fuzzing entry: each request in turn (call id, op, body) from one
  // client whose replies go to `fd`, then the client's end, as when its connection closes.
  // Throws (ending the client) at a request shorter than its head.
  void serve_requests_of_one_client(int fd, const std::vector<std::string>& requests) {
    std::map<std::uint64_t, std::size_t> held;
    auto client = std::make_shared<Client>(fd);
    {
      std::lock_guard l(mu_);
      client->id = ++next_client_;
    }
    try {
      for (const auto& r : requests) {
        if (r.size() < 9) throw ManagerError("a request shorter than its header");
        std::uint64_t id;
        std::memcpy(&id, r.data(), 8);
        if (!serve_request(client, id, static_cast<std::uint8_t>(r[8]),
                           std::string_view(r).substr(9), held))
          break;
      }
    } catch (...) {
    }
    end_client(*client, held);
  }

 private:
  // A call: looked up here; run here (its arguments read in place), or on a thread of its own
  // for a concurrent type.
  void serve_call(const std::shared_ptr<Client>& client, std::uint64_t id, std::string_view body) {
    std::shared_ptr<Object> object;
    const MethodEntry* method = nullptr;
    reduction::InArchive in(body);
    CallContext context{client->id, 0, &client->gone, client->conn.fileno()};
    try {
      std::uint64_t object_id;
      std::string name;
      in(object_id, name, context.thread);
      object = find(object_id);
      for (std::size_t i = 0; i < object->ops->method_count; ++i)
        if (name == object->ops->methods[i].name) method = &object->ops->methods[i];
      if (!method)
        throw ManagerError(object->ops->display + " has no served method '" + name + "'");
    } catch (const ManagerError& e) {
      client->reply(id, kManagerError, e.what());
      return;
    } catch (const std::exception& e) {
      client->reply(id, kManagerError, std::string("a malformed call: ") + e.what());
      return;
    }
    if (!object->ops->concurrent) {
      tls_call = context;
      auto [code, reply] = answer(kCall, {}, no_refs_, object, &in, method);
      client->reply(id, code, reply);
      return;
    }
    {
      std::lock_guard l(client->inflight_mu);
      ++client->inflight;
    }
    // The call's thread reads the arguments from its own copy (the frame's buffer is reused).
    auto args = std::make_shared<const std::string>(body.substr(body.size() - in.remaining()));
    threads_for_calls_.run([this, client, id, object, args, method, context] {
      tls_call = context;
      reduction::InArchive in(*args);
      auto [code, reply] = answer(kCall, {}, no_refs_, object, &in, method);
      client->reply(id, code, reply);
      std::lock_guard l(client->inflight_mu);
      if (--client->inflight == 0) client->inflight_cv.notify_all();
    });
  }

  // A client's connection ended (however its process did): its blocked calls give up, what
  // it held is released (a Lock: the next holder is told), then its references go.
  void end_client(Client& client, std::map<std::uint64_t, std::size_t>& held) {
    client.gone.store(true, std::memory_order_release);
    std::vector<std::shared_ptr<Object>> hooked;
    {
      std::lock_guard l(mu_);
      for (auto& [id, o] : objects_)
        if (o->ops->client_gone) hooked.push_back(o);
    }
    for (auto& o : hooked) {
      if (o->ops->concurrent) {
        o->ops->client_gone(o->p, client.id);
      } else {
        std::lock_guard l(o->call_mu);
        o->ops->client_gone(o->p, client.id);
      }
    }
    hooked.clear();
    {
      std::unique_lock l(client.inflight_mu);
      client.inflight_cv.wait(l, [&] { return client.inflight == 0; });
    }
    std::vector<std::uint64_t> unclaimed;
    {
      std::lock_guard l(mu_);
      for (auto it = transit_.begin(); it != transit_.end();) {
        if (it->second.second == client.id) {
          unclaimed.push_back(it->second.first);
          it = transit_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto id : unclaimed) drop(id, 1);
    for (const auto& [id, n] : held) drop(id, n);
  }

  std::shared_ptr<Object> find(std::uint64_t id) {
    std::lock_guard l(mu_);
    auto it = objects_.find(id);
    if (it == objects_.end()) throw ManagerError("no object " + std::to_string(id));
    return it->second;
  }

  std::string create(std::string_view body, std::map<std::uint64_t, std::size_t>& held) {
    reduction::InArchive in(body);
    std::string name, type_key, ctor_key;
    in(name, type_key, ctor_key);
    const TypeOps* ops = nullptr;
    if (auto t = types_.find(name); t != types_.end()) {
      ops = t->second;
      if (type_key != ops->key)
        throw ManagerError("'" + name + "' is registered here as another type (" + ops->display +
                           ")");
    } else {
      std::lock_guard l(tables_mu());
      auto s = type_table().find(type_key);
      if (s == type_table().end() || !s->second->standard)
        throw ManagerError("no type is registered as '" + name + "'");
      ops = s->second;
    }
    void* (*make)(reduction::InArchive&) = nullptr;
    {
      std::lock_guard l(tables_mu());
      auto c = constructor_table().find(ctor_key);
      if (c == constructor_table().end() || c->second.type_key != type_key)
        throw ManagerError("no such constructor of " + ops->display +
                           " in the server's program (a client of another build?)");
      make = c->second.make;
    }
    void* p = make(in);  // a constructor's exception is the caller's error
    auto o = std::make_shared<Object>(ops, p);
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

  // A reference held for a proxy in transit, until its receiver attaches (or the sender's
  // connection ends).
  std::string incref(std::string_view body, std::uint64_t client) {
    reduction::InArchive in(body);
    std::uint64_t id, token;
    in(id, token);
    std::lock_guard l(mu_);
    auto it = objects_.find(id);
    if (it == objects_.end()) throw ManagerError("no object " + std::to_string(id));
    ++it->second->refs;
    transit_[token] = {id, client};
    return {};
  }

  std::string attach(std::string_view body, std::map<std::uint64_t, std::size_t>& held) {
    reduction::InArchive in(body);
    std::uint64_t id, token;
    in(id, token);
    std::lock_guard l(mu_);
    auto it = objects_.find(id);
    if (it == objects_.end())
      throw ManagerError("object " + std::to_string(id) +
                         " is gone from the server (its last reference was dropped)");
    auto t = transit_.find(token);
    if (token != 0 && t != transit_.end() && t->second.first == id)
      transit_.erase(t);  // the sender's reference becomes the receiver's
    else
      ++it->second->refs;
    ++held[id];
    return {};
  }

  std::string count() {
    std::string out;
    reduction::OutArchive ar(out);
    std::lock_guard l(mu_);
    ar(std::uint64_t(objects_.size()));
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

  // The object goes with its last reference, once no call holds it (its destructor runs
  // outside the table's lock).
  void drop(std::uint64_t id, std::size_t n) {
    std::shared_ptr<Object> gone;  // destroyed after the lock is released
    std::lock_guard l(mu_);
    auto it = objects_.find(id);
    if (it == objects_.end()) return;
    it->second->refs -= std::min(n, it->second->refs);
    if (it->second->refs == 0) {
      gone = std::move(it->second);
      objects_.erase(it);
    }
  }

  // The number of connection threads serving, not sleeping for their client's next request:
  // `by` added for a scope (1: this thread serves; -1: it sleeps a while).
  struct Awake {
    Awake(std::atomic<int>& n, int by) : n(n), by(by) {
      n.fetch_add(by, std::memory_order_relaxed);
    }
    ~Awake() { n.fetch_sub(by, std::memory_order_relaxed); }
    std::atomic<int>& n;
    int by;
  };
  std::atomic<int> awake_{0};

  Listener listener_;
  AuthenticationString authkey_;
  std::map<std::string, const TypeOps*> types_;
  posix::unique_fd wake_r_, wake_w_;
  std::mutex mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Object>> objects_;
  std::uint64_t next_id_ = 0;
  std::uint64_t next_client_ = 0;
  std::vector<std::pair<int, std::thread>> threads_;
  std::set<int> finished_;
  std::map<std::uint64_t, std::size_t> no_refs_;  // a call creates none
  // Proxies in transit: token -> (object, the sending client).
  std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> transit_;
  CallThreads threads_for_calls_;
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
  const ParentProcess* parent = parent_process();
  server->serve_forever(parent ? parent->sentinel() : -1);
}

void fuzz_manager_requests(const std::vector<std::pair<std::string, std::string>>& types,
                           const std::vector<std::string>& requests) {
  // One server for the whole run (its listener on a private path); each input is a client.
  static Server* server = [&] {
    ServerSpec spec;
    spec.types = types;
    return new Server(spec, AuthenticationString("fuzz"));
  }();
  auto [mine, theirs] = posix::make_socketpair();
  // Nobody reads the replies: the peer's end is closed, so each send fails (as to a client
  // that died), which the server shrugs off.
  mine.reset();
  server->serve_requests_of_one_client(theirs.release(), requests);
}

// ---- the client ----

// A reply's error as the exception it stands for.
std::exception_ptr reply_error(std::uint8_t code, const std::string& body, const char* method) {
  if (code == kMethodError) {
    try {
      reduction::InArchive in(body);
      std::string type, message;
      int pid = 0;
      in(type, message, pid);
      // The standard objects' documented errors come back as themselves.
      if (type == reduction::type_name<Empty>()) return std::make_exception_ptr(Empty());
      if (type == reduction::type_name<Full>()) return std::make_exception_ptr(Full());
      if (type == reduction::type_name<BrokenBarrierError>())
        return std::make_exception_ptr(BrokenBarrierError());
      if (type == reduction::type_name<KeyError>())
        return std::make_exception_ptr(KeyError(message));
      return std::make_exception_ptr(
          RemoteError::in_manager(type, message, pid, method ? method : "?"));
    } catch (const std::exception& e) {
      return std::make_exception_ptr(
          ManagerError(std::string("a malformed error reply: ") + e.what()));
    }
  }
  return std::make_exception_ptr(ManagerError(body));
}

class Session final : public FutureSource, public std::enable_shared_from_this<Session> {
 public:
  Session(Address address, AuthenticationString authkey, Connection conn)
      : address_(std::move(address)),
        authkey_(std::move(authkey)),
        conn_(std::move(conn)),
        pid_(own_pid()) {}

  // Calls still in flight (their futures outlive every proxy) fail: nobody can read them now.
  ~Session() override {
    try_flush();  // async calls made and not yet sent: they run, as if sent at once
    std::vector<std::shared_ptr<Job>> orphans;
    for (auto& [id, entry] : waiting_)
      if (entry.job) orphans.push_back(std::move(entry.job));
    auto error = std::make_exception_ptr(
        ManagerError("the connection to the manager's server at " + address_text(address_) +
                     " was closed before the reply came (no proxy of it was left)"));
    for (auto& job : orphans) job->task_failed(0, error);
  }

  int pid() const { return pid_; }
  const Address& address() const { return address_; }
  const AuthenticationString& authkey() const { return authkey_; }

  // Sends a request and waits for its reply's body; throws as the reply says.
  std::string call(std::uint8_t op, const std::string& body, const char* method = nullptr) {
    Slot slot;
    std::unique_lock l(mu_);
    const std::uint64_t id = start(l, op, body, &slot, nullptr);
    pump(
        l, [&] { return slot.done; }, std::nullopt);
    waiting_.erase(id);
    if (!slot.done) throw ManagerError(dead_);
    l.unlock();
    if (slot.code == kOk) return std::move(slot.body);
    std::rethrow_exception(reply_error(slot.code, slot.body, method));
  }

  // Sends a call whose reply finishes `job` (task 0). While async calls are in flight a
  // reader thread runs, so that a future finishes (and its callbacks run) with nobody waiting
  // in result(); a caller waiting reads replies too, whichever comes first.
  void call_async(const std::string& body, const char* method, std::shared_ptr<Job> job) {
    std::unique_lock l(mu_);
    start(l, kCall, body, nullptr, std::move(job), method);
    if (reader_idle_) reader_cv_.notify_one();  // a burst begins
    if (reader_running_ || async_pending_ == 0) return;
    std::thread reader([self = shared_from_this()] { self->read_async(); });
    reader.detach();  // it holds the session, and ends on its own
    reader_running_ = true;
  }

  // A request with no reply (a release); errors ignored: a gone server has released it all.
  void post(std::uint8_t op, const std::string& body) noexcept {
    try {
      std::lock_guard l(mu_);
      append_frame(outbox_, 0, op, body);
    } catch (...) {
      return;
    }
    try_flush();
  }

  // FutureSource: a call is sent at once, so it is running and cannot be cancelled.
  bool cancel(const Job*, std::size_t) override { return false; }
  bool wait(const Job* job, const std::function<bool()>& done,
            std::optional<Duration> timeout) override {
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (timeout)
      deadline = std::chrono::steady_clock::now() +
                 std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                     std::max(*timeout, Duration::zero()));
    std::unique_lock l(mu_);
    pump(l, done, deadline, job);
    // The server gone: another thread may be failing this job just now.
    auto finished = [&] { return done() || !delivering_.count(job); };
    if (deadline)
      cv_.wait_until(l, *deadline, finished);
    else
      cv_.wait(l, finished);
    return done();
  }
  void notify_waiters() override {
    std::lock_guard l(mu_);
    cv_.notify_all();
  }

 private:
  struct Slot {
    bool done = false;
    std::uint8_t code = 0;
    std::string body;
  };
  // A reply as read: which call, its code, its body.
  struct Reply {
    std::uint64_t id;
    std::uint8_t code;
    std::string body;
  };
  // A call waiting for its reply: a caller's slot, or an async call's job.
  struct Waiting {
    Slot* slot = nullptr;
    std::shared_ptr<Job> job;
    const char* method = nullptr;  // a served method's name (static), for its errors
  };
  // Async calls in flight per process: past it, async_call first waits for the oldest (the
  // server replies in order, and a client that never reads would fill both sockets).
  static constexpr std::size_t kWindow = 64;
  // A request this long is sent only once no async reply is pending: a caller blocked sending
  // it while the server is blocked sending replies nobody reads would wait forever.
  static constexpr std::size_t kLargeRequest = 64u << 10;

  // The reader thread: reads while async calls are in flight and no caller reads for them (a
  // caller reads its own replies: handing them over from this thread costs wake-ups and the
  // lock's contention), lingers a moment for the next burst, then ends (the session it holds
  // may go then).
  void read_async() {
    std::unique_lock l(mu_);
    const auto idle = std::chrono::milliseconds(100);
    auto grace = kReaderGrace;
    while (dead_.empty()) {
      if (async_pending_ == 0) {
        grace = kReaderGrace;
        reader_idle_ = true;
        reader_cv_.wait_for(l, idle, [&] { return !dead_.empty() || async_pending_ > 0; });
        reader_idle_ = false;
        if (async_pending_ == 0) break;
        continue;
      }
      // A burst of async calls is usually followed by a wait for their results: this thread
      // reads only once no caller came for a moment (looking less often while one does).
      const std::uint64_t seen = caller_entries_;
      reader_cv_.wait_for(l, grace, [&] { return !dead_.empty(); });
      if (!outbox_.empty()) {  // calls nobody read for yet: they go now
        l.unlock();
        try_flush();
        l.lock();
      }
      if (callers_ == 0 && caller_entries_ == seen) {
        grace = kReaderGrace;
        pump(
            l, [&] { return async_pending_ == 0 || callers_ > 0; }, std::nullopt, nullptr, true);
      } else {
        grace = std::min(grace * 2, decltype(grace)(kReaderGraceMax));
      }
    }
    reader_running_ = false;
  }
  // A caller in pump(): the reader thread stands aside.
  struct Caller {
    Caller(Session& s, bool background) : s(background ? nullptr : &s) {
      if (!this->s) return;
      ++this->s->callers_;
      ++this->s->caller_entries_;
    }
    ~Caller() {
      if (s) --s->callers_;
    }
    Session* s;
  };

  // Registers a request under a new id and sends it (under l, released while sending).
  std::uint64_t start(std::unique_lock<std::mutex>& l, std::uint8_t op, const std::string& body,
                      Slot* slot, std::shared_ptr<Job> job, const char* method = nullptr) {
    if (!dead_.empty()) throw ManagerError(dead_);
    if (job)
      pump(
          l, [&] { return async_pending_ < kWindow; }, std::nullopt);
    if (body.size() >= kLargeRequest)
      pump(
          l, [&] { return async_pending_ == 0; }, std::nullopt);
    if (!dead_.empty()) throw ManagerError(dead_);
    const std::uint64_t id = ++next_id_;
    const bool async = job != nullptr;
    if (async) ++async_pending_;
    waiting_[id] = Waiting{slot, std::move(job), method};
    append_frame(outbox_, id, op, body);
    // An async call's frame waits for the next reader (or the reader thread, a moment later),
    // so that a burst goes in one write; unless a thread already reads: its reply may wait
    // for this call (a get for a put), so it goes now, as a plain call does.
    if (async && !reading_ && outbox_.size() < kReplyBatch) return id;
    l.unlock();
    try {
      flush();
    } catch (...) {
      l.lock();
      forget(id);
      throw;
    }
    l.lock();
    return id;
  }

  void forget(std::uint64_t id) {
    auto it = waiting_.find(id);
    if (it == waiting_.end()) return;
    if (it->second.job) --async_pending_;
    waiting_.erase(it);
  }

  // Reads replies (one thread at a time; the others wait) until `done` holds, the server is
  // gone or the deadline passes; with l held.
  // `job`: the waiter's own, which it must not read for while another thread is finishing it
  // (its reply taken, the future not yet done): no reply may be left to come.
  // `background`: the reader thread's (callers count in callers_, it does not).
  template <class Done>
  void pump(std::unique_lock<std::mutex>& l, const Done& done,
            std::optional<std::chrono::steady_clock::time_point> deadline, const Job* job = nullptr,
            bool background = false) {
    Caller caller(*this, background);
    while (!done() && dead_.empty()) {
      if (deliver_from_inbox(l)) {  // read by another thread, not delivered yet
        cv_.notify_all();
        continue;
      }
      if (reading_ || (job && delivering_.count(job))) {
        if (deadline)
          cv_.wait_until(l, *deadline);
        else
          cv_.wait(l);
        if (deadline && std::chrono::steady_clock::now() >= *deadline) return;
        continue;
      }
      if (deadline && std::chrono::steady_clock::now() >= *deadline) return;
      if (!outbox_.empty()) {  // the replies read for may be for these: they go first
        l.unlock();
        try_flush();  // failed: the server is gone, dead_ says so and the loop ends
        l.lock();
        continue;
      }
      reading_ = true;  // with the outbox empty, in the same hold of the lock: see start()
      l.unlock();
      // Every reply one read brought (copied out: the buffer is the next reader's).
      std::vector<Reply> replies;
      std::string failure;
      try {
        const int fd = conn_.fileno();
        if (!replies_.has_frame()) {
          // No longer than the caller's deadline: result(0) looks once.
          const auto spin = deadline ? std::min<Clock::duration>(kSpin, *deadline - Clock::now())
                                     : Clock::duration(kSpin);
          std::optional<std::size_t> n = posix::recv_spinning(fd, replies_.space(), spin);
          if (!n && (!deadline || posix::wait_readable(fd, Duration(*deadline - Clock::now()))))
            n = posix::recv_some(fd, replies_.space());
          if (n == 0) throw EOFError("EOF: the other end of the connection was closed");
          if (n) replies_.commit(*n);
        }
        while (auto f = replies_.next())
          replies.push_back({f->id, f->code, std::string(f->payload)});
      } catch (const std::exception& e) {
        failure = e.what();
      }
      l.lock();
      reading_ = false;
      // Into the inbox, where every waiter delivers from (one delivery may let the lock go:
      // a waiter whose reply this read brought must not read for it meanwhile).
      for (auto& r : replies) inbox_.push_back(std::move(r));
      cv_.notify_all();
      if (!failure.empty()) {
        // What came before the failure first: those calls were answered.
        while (deliver_from_inbox(l)) {
        }
        fail_all(l, "the manager's server at " + address_text(address_) +
                        " is gone (its objects with it): " + failure);
        cv_.notify_all();
      }
    }
  }

  // The oldest reply read and not delivered, delivered; false if there is none.
  bool deliver_from_inbox(std::unique_lock<std::mutex>& l) {
    if (inbox_.empty()) return false;
    Reply r = std::move(inbox_.front());
    inbox_.pop_front();
    deliver(l, std::move(r));
    return true;
  }

  // One reply to its caller's slot, or to its job (finished without the lock: its callbacks
  // may call the server again).
  void deliver(std::unique_lock<std::mutex>& l, Reply reply) {
    auto it = waiting_.find(reply.id);
    if (it == waiting_.end()) return;
    const auto code = reply.code;
    if (it->second.slot) {
      it->second.slot->code = code;
      it->second.slot->body = std::move(reply.body);
      it->second.slot->done = true;
      return;
    }
    auto job = std::move(it->second.job);
    const char* method = it->second.method;
    waiting_.erase(it);
    --async_pending_;
    delivering_.insert(job.get());
    l.unlock();
    if (code == kOk)
      job->task_done(0, reply.body);
    else
      job->task_failed(0, reply_error(code, reply.body, method));
    l.lock();
    delivering_.erase(job.get());
    l.unlock();
    job.reset();  // the last reference to the future may go here: not under the lock
    l.lock();
  }

  // The server is gone: every async call fails with why; callers see dead_.
  void fail_all(std::unique_lock<std::mutex>& l, std::string why) {
    if (dead_.empty()) dead_ = std::move(why);
    reader_cv_.notify_all();
    std::vector<std::shared_ptr<Job>> jobs;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->second.job) {
        jobs.push_back(std::move(it->second.job));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    async_pending_ = 0;
    if (jobs.empty()) return;
    auto error = std::make_exception_ptr(ManagerError(dead_));
    for (auto& job : jobs) delivering_.insert(job.get());
    l.unlock();
    for (auto& job : jobs) job->task_failed(0, error);
    l.lock();
    for (auto& job : jobs) delivering_.erase(job.get());
    l.unlock();
    jobs.clear();
    l.lock();
  }

  // flush() for a caller with nobody to throw to: a failure has failed every call already.
  void try_flush() noexcept {
    try {
      flush();
    } catch (...) {
    }
  }

  // Writes the outbox's frames (taken under send_mu_: frames go in the order they were put
  // in, whichever thread writes them).
  void flush() {
    std::lock_guard l(send_mu_);
    std::string frames;
    {
      std::lock_guard m(mu_);
      frames.swap(outbox_);
    }
    if (frames.empty()) return;
    try {
      write_frames(conn_.fileno(), frames);
    } catch (const std::exception& e) {
      std::unique_lock m(mu_);
      fail_all(m, "the manager's server at " + address_text(address_) +
                      " is gone (its objects with it): " + e.what());
      cv_.notify_all();
      throw ManagerError(dead_);
    }
  }

  Address address_;
  AuthenticationString authkey_;
  Connection conn_;  // the socket, its handshake done: frames from here on
  FrameReader replies_{kMaxRequest, "the manager's connection"};  // the reading thread's
  std::deque<Reply> inbox_;  // read, not yet delivered (under mu_)
  std::string outbox_;       // frames not yet written (under mu_)
  int pid_;
  std::mutex send_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool reading_ = false;
  std::string dead_;
  std::uint64_t next_id_ = 0;
  std::size_t async_pending_ = 0;
  bool reader_running_ = false;
  std::condition_variable reader_cv_;  // the reader thread's: work for it, or a caller came
  std::size_t callers_ = 0;            // threads in pump() other than the reader
  std::uint64_t caller_entries_ = 0;   // how many times one came in
  bool reader_idle_ = false;           // it waits for async calls to be made
  std::set<const Job*> delivering_;    // jobs being finished outside the lock
  std::unordered_map<std::uint64_t, Waiting> waiting_;
};

// This process's session with the server at `address`: one connection per client process,
// shared by its managers and proxies (a fork child's inherited ones are its parent's).
std::shared_ptr<Session> session_for(const Address& address, const AuthenticationString& authkey) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<Session>> sessions;
  const std::string key = address_text(address);
  std::lock_guard l(mu);
  if (auto s = sessions[key].lock(); s && s->pid() == own_pid() && s->authkey() == authkey)
    return s;
  auto conn = Client(address, ClientOptions{.authkey = authkey});
  auto s = std::make_shared<Session>(address, authkey, std::move(conn));
  sessions[key] = s;
  return s;
}

namespace {
std::string readable(const std::string& mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? name.get() : mangled;
}

std::string id_and_token(std::uint64_t id, std::uint64_t token) {
  std::string body;
  reduction::OutArchive ar(body);
  ar(id, token);
  return body;
}

// Numbers this thread for the server (which thread holds an RLock).
std::uint64_t call_thread() {
  static std::atomic<std::uint64_t> threads{0};
  thread_local const std::uint64_t thread = ++threads;
  return thread;
}

// The ref's session in this process: a fork child's copy connects and takes a reference of
// its own on first use.
std::shared_ptr<Session> bound(ObjectRef& ref) {
  std::lock_guard l(ref.mu);
  if (ref.session->pid() != own_pid()) {
    auto s = session_for(ref.session->address(), ref.session->authkey());
    s->call(kAttach, id_and_token(ref.id, 0));
    ref.session = s;
  }
  return ref.session;
}
}  // namespace

ObjectRef::~ObjectRef() {
  if (!session || session->pid() != own_pid()) return;  // a fork child's copy: not its own
  std::string body;
  reduction::OutArchive ar(body);
  ar(id);
  session->post(kRelease, body);
}

std::string call_method(ObjectRef& ref, const char* method, const std::string& args) {
  auto session = bound(ref);
  std::string body;
  reduction::OutArchive ar(body);
  ar(ref.id, std::string(method), call_thread());
  body += args;
  return session->call(kCall, body, method);
}

std::shared_ptr<FutureSource> source_of(ObjectRef& ref) {
  return bound(ref);
}

void call_method_async(ObjectRef& ref, const char* method, const std::string& args,
                       std::shared_ptr<Job> job) {
  auto session = bound(ref);
  std::string body;
  reduction::OutArchive ar(body);
  ar(ref.id, std::string(method), call_thread());
  body += args;
  session->call_async(body, method, std::move(job));
}

void save_ref(reduction::OutArchive& ar, ObjectRef& ref, const char* type_key) {
  auto session = bound(ref);
  std::uint64_t token = 0;
  while (token == 0) token = (std::uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  session->call(kIncref, id_and_token(ref.id, token));
  const Address& a = session->address();
  const auto* tcp = std::get_if<std::pair<std::string, int>>(&a);
  const bool with_key = reduction::spawning();
  ar(tcp != nullptr, tcp ? tcp->first : std::get<std::string>(a), tcp ? tcp->second : 0, ref.id,
     token, std::string(type_key), with_key);
  if (with_key) ar(session->authkey());
}

std::shared_ptr<ObjectRef> load_ref(reduction::InArchive& ar, const char* type_key) {
  bool tcp = false, with_key = false;
  std::string where, type;
  int port = 0;
  std::uint64_t id = 0, token = 0;
  ar(tcp, where, port, id, token, type, with_key);
  AuthenticationString authkey = current_process().authkey();
  if (with_key) ar(authkey);
  if (type != type_key)
    throw PicklingError("a proxy of another type (" + readable(type) +
                        ") cannot be loaded as this one (" + readable(type_key) + ")");
  Address address = tcp ? Address(std::pair<std::string, int>(where, port)) : Address(where);
  auto session = session_for(address, authkey);
  session->call(kAttach, id_and_token(id, token));
  auto ref = std::make_shared<ObjectRef>();
  ref->session = std::move(session);
  ref->id = id;
  return ref;
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
  int owner = detail::own_pid();  // only the process that started the server stops it
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

BaseManager::BaseManager(BaseManager&&) noexcept = default;

BaseManager::~BaseManager() {
  if (!s_) return;  // moved from
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
}

void BaseManager::connect() {
  if (!s_->address) throw std::logic_error("connect() needs the server's address");
  s_->session = detail::session_for(*s_->address, s_->authkey);
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
  if (s_->session->pid() != detail::own_pid())  // a fork child's copy: its own connection
    s_->session = detail::session_for(*s_->address, s_->authkey);
  return s_->session;
}

void BaseManager::serve_forever() {
  detail::Server server(spec_of(s_->address, s_->types), s_->authkey);
  s_->address = server.address();
  server.serve_forever();
}

void BaseManager::shutdown() {
  if (!s_ || !s_->server || s_->shut || s_->owner != detail::own_pid()) return;  // !s_: moved from
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
