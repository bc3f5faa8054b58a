// The MPI transport of the pool engine (component multiprocess::mpi; src/pool_transport.hpp).
//
// The engine is the one of mp::Pool, unchanged: it reaches each worker through a socket of
// frames. Here the other end of that socket is the hub, one thread of rank 0 that owns every
// MPI call after init(): it carries the bytes the engine writes to the worker's rank as MPI
// messages, and writes what the rank sends back into the socket. On a worker rank the main
// thread is the pump that does the same for the local serve_tasks() loop (the very loop of a
// local worker process) running in a second thread. A worker's start is a "session" on its
// rank; the session's end (the loop returned: close, maxtasksperchild) is told back, with the
// last task begun, and makes the link's sentinel readable.
//
// Messages (one tag): a Header, then bytes. Stream bytes cross in pieces of at most kPiece,
// so a payload over 2 GiB (MPI's int counts; Open MPI 4.1 has no large-count API) is many
// messages. Every send is MPI_Isend, kept until it completes, and both sides keep receiving
// meanwhile: two ranks sending each other large messages never wait on each other.
//
// Idle: MPI has no descriptor to sleep on, so both sides poll MPI_Iprobe, backing off from a
// spin of kSpin (yielding) to sleeps of up to kMaxNap (with a session) or kMaxNapIdle (a worker
// rank with none); the hub sleeps on its sockets alone while no session is open.
#define OMPI_SKIP_MPICXX 1  // the C API only: no libmpi_cxx
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <iostream>
#include <list>
#include <mutex>
#include <thread>

#include "exception_info.hpp"
#include "mp/mpi.hpp"
#include "mp/spawn.hpp"
#include "mp/sync_manager.hpp"
#include "pool_transport.hpp"
#include "posix/posix.hpp"
#include "runtime.hpp"

namespace mp::mpi {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTag = 7341;
constexpr std::size_t kPiece = std::size_t{4} << 20;         // stream bytes per message
constexpr std::size_t kMaxQueued = std::size_t{256} << 20;   // sent, not yet completed
constexpr auto kSpin = std::chrono::microseconds(1000);      // polling (yielding) after activity
constexpr auto kFirstNap = std::chrono::microseconds(50);    // then sleeps, doubling...
constexpr auto kMaxNap = std::chrono::milliseconds(1);       // ...to this with a session
constexpr auto kMaxNapIdle = std::chrono::milliseconds(10);  // a worker rank without one

enum Kind : std::uint32_t {
  kStart = 1,  // to a rank: a session begins (value: maxtasks; bytes: spin_ns, initializer)
  kData = 2,   // stream bytes of a session, both ways
  kEnd = 3,    // to a rank: the session is abandoned (terminate)
  kEnded = 4,  // from a rank: its loop returned (value: the last task begun)
  kExit = 5,   // to a rank: the job ends
};
struct Header {
  std::uint32_t kind;
  std::uint32_t session;
  std::uint64_t value;
};

int g_rank = 0;
int g_size = 1;
std::vector<int> g_pids;  // rank 0: each rank's pid (its hello)

bool mpi_live() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

// An uncaught exception on any rank: printed, then the whole job ends (never a hung job).
[[noreturn]] void on_terminate() {
  if (std::current_exception()) {
    std::cerr << "mp::mpi: uncaught exception on rank " << g_rank << ": "
              << detail::exception_type() << ": " << detail::exception_what() << std::endl;
  } else {
    std::cerr << "mp::mpi: std::terminate on rank " << g_rank << std::endl;
  }
  if (mpi_live()) MPI_Abort(MPI_COMM_WORLD, 1);
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) std::_Exit(1);  // the job has ended already (a build-id mismatch): no core dump
  std::abort();
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw ProcessError(std::string("mp::mpi: ") + call + ": " + std::string(text, std::size_t(len)));
}

// MPI_Isends in flight, each with its bytes until it completes.
class Sender {
 public:
  void send(int dest, Header h, std::span<const std::byte> body) {
    auto& o = q_.emplace_back();
    o.bytes.resize(sizeof h + body.size());
    std::memcpy(o.bytes.data(), &h, sizeof h);
    if (!body.empty()) std::memcpy(o.bytes.data() + sizeof h, body.data(), body.size());
    check_mpi(MPI_Isend(o.bytes.data(), int(o.bytes.size()), MPI_BYTE, dest, kTag, MPI_COMM_WORLD,
                        &o.req),
              "MPI_Isend");
    queued_ += o.bytes.size();
  }
  // Frees what has completed; true if something did.
  bool progress() {
    bool any = false;
    for (auto it = q_.begin(); it != q_.end();) {
      int done = 0;
      check_mpi(MPI_Test(&it->req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (!done) {
        ++it;
        continue;
      }
      queued_ -= it->bytes.size();
      it = q_.erase(it);
      any = true;
    }
    return any;
  }
  void drain() {
    while (!q_.empty()) {
      progress();
      if (!q_.empty()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  bool empty() const { return q_.empty(); }
  std::size_t queued() const { return queued_; }

 private:
  struct Outgoing {
    MPI_Request req = MPI_REQUEST_NULL;
    std::string bytes;
  };
  std::list<Outgoing> q_;  // a list: a pending send's buffer never moves
  std::size_t queued_ = 0;
};

// One message from `source` (MPI_ANY_SOURCE: any), if one is there.
struct Message {
  int from = -1;
  Header h{};
  std::string buf;
  std::span<const std::byte> body() const {
    return std::as_bytes(std::span(buf)).subspan(sizeof(Header));
  }
};
bool receive(int source, Message& m) {
  int flag = 0;
  MPI_Status st;
  check_mpi(MPI_Iprobe(source, kTag, MPI_COMM_WORLD, &flag, &st), "MPI_Iprobe");
  if (!flag) return false;
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  m.buf.resize(std::size_t(count));
  check_mpi(MPI_Recv(m.buf.data(), count, MPI_BYTE, st.MPI_SOURCE, kTag, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE),
            "MPI_Recv");
  if (m.buf.size() < sizeof(Header)) throw ProcessError("mp::mpi: a truncated message");
  std::memcpy(&m.h, m.buf.data(), sizeof(Header));
  m.from = st.MPI_SOURCE;
  return true;
}

// How long to sleep when nothing happened: a spin first, then naps that double.
class Backoff {
 public:
  void active() {
    last_ = Clock::now();
    nap_ = kFirstNap;
  }
  // nullopt: keep spinning (poll without waiting).
  Duration next(Duration cap) {
    // Within a task's trip of the last activity, a reply is likely: polled for, the core
    // offered to others between polls (an MPI arrival wakes no sleeper).
    if (Clock::now() - last_ < kSpin) {
      std::this_thread::yield();
      return Duration(0);
    }
    const Duration d = std::min(Duration(nap_), cap);
    nap_ = std::min(nap_ * 2, std::chrono::duration_cast<std::chrono::microseconds>(kMaxNapIdle));
    return d;
  }

 private:
  Clock::time_point last_ = Clock::now();
  std::chrono::microseconds nap_ = kFirstNap;
};

// ---- rank 0: the hub and its links ----

struct LinkState {
  int rank = 0;
  std::uint32_t session = 0;
  posix::unique_fd hub_end;     // the hub's end of the engine's socket
  posix::unique_fd sentinel_w;  // closed when the session ends
  bool ended = false;
  std::optional<int> code;
  std::uint64_t running = 0;
  // kStart's contents, sent by the hub.
  std::string initializer;
  std::int64_t maxtasks = 0, spin_ns = 0;
};

class Hub {
 public:
  static Hub& get() {
    static Hub* hub = new Hub;  // never destroyed: stopped by stop() at exit
    return *hub;
  }

  void start_thread() {
    auto [r, w] = posix::make_socketpair();
    wake_r_ = std::move(r);
    wake_w_ = std::move(w);
    owner_.assign(std::size_t(g_size), nullptr);
    thread_ = std::thread([this] { loop(); });
  }

  std::shared_ptr<LinkState> open(const detail::WorkerSpec& spec, int& engine_fd, int& sentinel_r) {
    const int rank = int(spec.slot) + 1;
    if (rank >= g_size)
      throw ProcessError("mp::mpi: worker " + std::to_string(spec.slot) + " asked of a job with " +
                         std::to_string(g_size - 1) + " worker ranks");
    auto link = std::make_shared<LinkState>();
    link->rank = rank;
    link->initializer = spec.initializer;
    link->maxtasks = spec.maxtasks;
    link->spin_ns = spec.spin_ns;
    auto [ours, theirs] = posix::make_socketpair();
    auto [sr, sw] = posix::make_pipe();
    link->hub_end = std::move(theirs);
    link->sentinel_w = std::move(sw);
    {
      std::lock_guard l(m_);
      if (stopped_) throw ProcessError("mp::mpi: the job is ending");
      if (owner_[std::size_t(rank)])
        throw ProcessError("mp::mpi: rank " + std::to_string(rank) +
                           " already serves another Pool or Executor (one at a time per rank)");
      link->session = next_session_++;
      owner_[std::size_t(rank)] = link;
      starts_.push_back(link);
    }
    wake();
    engine_fd = ours.release();
    sentinel_r = sr.release();
    return link;
  }

  // terminate/kill: the session ends now for the engine; the rank is told to drop it (its
  // running task, if any, runs to its end there).
  void abandon(const std::shared_ptr<LinkState>& link, int code) {
    {
      std::lock_guard l(m_);
      if (link->ended) return;
      end_locked(*link, code);
      ends_.push_back({link->rank, link->session});
    }
    cv_.notify_all();
    wake();
  }

  bool wait_ended(const std::shared_ptr<LinkState>& link, std::optional<Duration> timeout) {
    std::unique_lock l(m_);
    if (!timeout) {
      cv_.wait(l, [&] { return link->ended; });
      return true;
    }
    return cv_.wait_for(l, *timeout, [&] { return link->ended; });
  }

  template <class T>
  T read(const std::shared_ptr<LinkState>& link, T LinkState::*field) {
    std::lock_guard l(m_);
    return (*link).*field;
  }

  // At exit: every rank is told to leave, then MPI is finalized.
  void stop() {
    {
      std::lock_guard l(m_);
      if (stopped_) return;
      stopped_ = true;
    }
    if (!thread_.joinable()) return;  // a job of one rank: never started
    wake();
    thread_.join();
  }

 private:
  void wake() {
    const std::byte b{1};
    posix::send_nowait(wake_w_.get(), std::span(&b, 1));
  }

  // Under the lock.
  void end_locked(LinkState& link, int code) {
    link.ended = true;
    link.code = code;
    link.sentinel_w.reset();  // the sentinel reads EOF: the engine sees the worker's end
    if (owner_[std::size_t(link.rank)].get() == &link) owner_[std::size_t(link.rank)].reset();
  }

  void loop();

  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<LinkState>> owner_;  // by rank: the live session's link
  std::vector<std::shared_ptr<LinkState>> starts_;
  std::vector<std::pair<int, std::uint32_t>> ends_;
  std::uint32_t next_session_ = 1;
  bool stopped_ = false;
  posix::unique_fd wake_r_, wake_w_;
  std::thread thread_;
};

void Hub::loop() {
  Sender sender;
  Message msg;
  Backoff backoff;
  std::string piece(kPiece, '\0');
  std::vector<std::shared_ptr<LinkState>> active;  // sessions whose bytes the hub carries
  std::vector<posix::PollFd> fds;
  for (;;) {
    bool activity = false;
    bool stopping;
    {
      std::lock_guard l(m_);
      stopping = stopped_;
      // Ends first: a rank finishes its old session before it starts the next.
      for (auto [rank, session] : ends_) sender.send(rank, {kEnd, session, 0}, {});
      if (!ends_.empty()) activity = true;
      ends_.clear();
      for (auto& link : starts_) {
        std::string body(sizeof(std::int64_t), '\0');
        std::memcpy(body.data(), &link->spin_ns, sizeof(std::int64_t));
        body += link->initializer;
        sender.send(link->rank, {kStart, link->session, static_cast<std::uint64_t>(link->maxtasks)},
                    std::as_bytes(std::span(body)));
        if (!link->ended) active.push_back(link);
        activity = true;
      }
      starts_.clear();
      std::erase_if(active, [](auto& link) { return link->ended; });
    }
    if (stopping) break;
    // The engine's bytes to the ranks (held back while much is still on its way).
    for (auto& link : active) {
      if (sender.queued() > kMaxQueued) break;
      auto n = posix::recv_nowait(link->hub_end.get(), std::as_writable_bytes(std::span(piece)));
      if (!n || *n == 0) continue;  // nothing, or the engine's end closed (ended already)
      sender.send(link->rank, {kData, link->session, 0}, std::as_bytes(std::span(piece)).first(*n));
      activity = true;
    }
    // The ranks' bytes to the engine.
    while (receive(MPI_ANY_SOURCE, msg)) {
      activity = true;
      std::shared_ptr<LinkState> link;
      for (auto& a : active)
        if (a->rank == msg.from && a->session == msg.h.session) link = a;
      if (!link) continue;  // an abandoned session's: nobody wants it
      if (msg.h.kind == kData) {
        try {
          // The engine reads its sockets whenever they are readable, so this write is short.
          const std::span<const std::byte> parts[] = {msg.body()};
          posix::write_all(link->hub_end.get(), parts, true);
        } catch (const std::system_error&) {
          // The engine has let go of it.
        }
      } else if (msg.h.kind == kEnded) {
        {
          std::lock_guard l(m_);
          link->running = msg.h.value;
          if (!link->ended) end_locked(*link, 0);
        }
        cv_.notify_all();
      }
    }
    if (sender.progress()) activity = true;
    if (activity) {
      backoff.active();
      continue;
    }
    // Nothing happened: sleep on our sockets, for a nap while a session could send.
    fds.clear();
    fds.push_back({wake_r_.get()});
    for (auto& link : active) fds.push_back({link->hub_end.get()});
    std::optional<Duration> nap;
    if (!active.empty() || !sender.empty()) nap = backoff.next(kMaxNap);
    // poll() counts whole milliseconds: a shorter nap is a sleep (the sockets are looked at
    // after it), or every trip would wait a millisecond at each end.
    if (nap && *nap < std::chrono::milliseconds(1))
      std::this_thread::sleep_for(*nap);
    else if (!nap || *nap > Duration(0))
      posix::poll_fds(fds, nap);
    if (fds[0].readable) {
      std::byte drainbuf[64];
      while (posix::recv_nowait(wake_r_.get(), drainbuf).value_or(0) > 0) {
      }
    }
  }
  // The job ends: every worker rank leaves its loop.
  for (int r = 1; r < g_size; ++r) sender.send(r, {kExit, 0, 0}, {});
  sender.drain();
}

class MpiLink final : public detail::WorkerLink {
 public:
  explicit MpiLink(const detail::WorkerSpec& spec) {
    int efd = -1, sfd = -1;
    state_ = Hub::get().open(spec, efd, sfd);
    engine_end_.reset(efd);
    sentinel_r_.reset(sfd);
    pid_ = g_pids.at(std::size_t(state_->rank));
  }
  ~MpiLink() override { Hub::get().abandon(state_, -15); }
  int fd() const override { return engine_end_.get(); }
  int sentinel() const override { return sentinel_r_.get(); }
  int pid() const override { return pid_; }
  std::uint64_t running() const override { return Hub::get().read(state_, &LinkState::running); }
  // A rank cannot be signalled: its session is dropped, its running task finishes there.
  void terminate() override { Hub::get().abandon(state_, -15); }
  void kill() override { Hub::get().abandon(state_, -9); }
  void join(std::optional<Duration> timeout) override { Hub::get().wait_ended(state_, timeout); }
  std::optional<int> exitcode() const override { return Hub::get().read(state_, &LinkState::code); }

 private:
  std::shared_ptr<LinkState> state_;
  posix::unique_fd engine_end_, sentinel_r_;
  int pid_ = 0;
};

class MpiTransport final : public detail::Transport {
 public:
  std::unique_ptr<detail::WorkerLink> start(const detail::WorkerSpec& spec) override {
    return std::make_unique<MpiLink>(spec);
  }
};

// ---- ranks >= 1: the pump ----

struct Session {
  std::uint32_t id = 0;
  posix::unique_fd end;  // the pump's end of the loop's socket
  std::thread thread;
  std::uint64_t running = 0;  // written by the loop (atomic_ref), read once it has returned
  bool abandoned = false;
  std::string outbox;  // stream bytes for the loop, not yet written
  std::size_t sent = 0;
};

[[noreturn]] void serve_rank() {
  Sender sender;
  Message msg;
  Backoff backoff;
  std::string piece(kPiece, '\0');
  std::unique_ptr<Session> s;
  auto finish = [&] {
    if (!s) return;
    s->thread.join();
    if (!s->abandoned)
      sender.send(0, {kEnded, s->id, std::atomic_ref<std::uint64_t>(s->running).load()}, {});
    s.reset();
  };
  bool exiting = false;
  while (!exiting) {
    bool activity = false;
    while (!exiting && receive(0, msg)) {
      activity = true;
      if (msg.h.kind == kStart) {
        if (s && !s->abandoned) {  // never left open by rank 0; if it were, it ends now
          s->abandoned = true;
          posix::shutdown_both(s->end.get());
        }
        finish();  // an abandoned one's task ends first: one loop at a time
        s = std::make_unique<Session>();
        s->id = msg.h.session;
        auto body = msg.body();
        std::int64_t spin_ns = 0;
        if (body.size() < sizeof spin_ns) throw ProcessError("mp::mpi: a truncated start");
        std::memcpy(&spin_ns, body.data(), sizeof spin_ns);
        std::string initializer(reinterpret_cast<const char*>(body.data()) + sizeof spin_ns,
                                body.size() - sizeof spin_ns);
        auto [ours, theirs] = posix::make_socketpair();
        s->end = std::move(ours);
        const auto maxtasks = static_cast<std::int64_t>(msg.h.value);
        s->thread =
            std::thread([fd = std::move(theirs), running = &s->running,
                         initializer = std::move(initializer), maxtasks, spin_ns]() mutable {
              std::atomic_ref<std::uint64_t> r(*running);
              detail::serve_tasks(fd.get(), -1, &r, initializer, maxtasks, spin_ns);
              // Our end closes here: the pump reads EOF, the session has ended.
            });
      } else if (msg.h.kind == kData) {
        if (s && s->id == msg.h.session && !s->abandoned)
          s->outbox.append(reinterpret_cast<const char*>(msg.body().data()), msg.body().size());
      } else if (msg.h.kind == kEnd) {
        if (s && s->id == msg.h.session) {
          s->abandoned = true;
          s->outbox.clear();
          s->sent = 0;
          posix::shutdown_both(s->end.get());  // the loop reads EOF; its writes fail
        }
      } else if (msg.h.kind == kExit) {
        exiting = true;
      }
    }
    if (s) {
      while (s->sent < s->outbox.size()) {
        const auto n =
            posix::send_nowait(s->end.get(), std::as_bytes(std::span(s->outbox)).subspan(s->sent));
        if (n == 0) break;
        s->sent += n;
        activity = true;
      }
      if (s->sent == s->outbox.size()) s->outbox.clear(), s->sent = 0;
      for (;;) {
        if (sender.queued() > kMaxQueued) break;
        auto n = posix::recv_nowait(s->end.get(), std::as_writable_bytes(std::span(piece)));
        if (!n) break;
        activity = true;
        if (*n == 0) {  // the loop returned
          finish();
          break;
        }
        if (!s->abandoned)
          sender.send(0, {kData, s->id, 0}, std::as_bytes(std::span(piece)).first(*n));
      }
    }
    if (sender.progress()) activity = true;
    if (activity) {
      backoff.active();
      continue;
    }
    const Duration nap = backoff.next(s ? Duration(kMaxNap) : Duration(kMaxNapIdle));
    if (nap <= Duration(0)) continue;
    if (nap < std::chrono::milliseconds(1)) {
      std::this_thread::sleep_for(nap);  // as the hub's: poll() counts milliseconds
    } else if (s) {
      posix::PollFd p{s->end.get(), !s->outbox.empty()};
      posix::poll_fds(std::span(&p, 1), nap);
    } else {
      posix::PollFd none[1];
      posix::poll_fds(std::span(none, 0), nap);
    }
  }
  if (s) {
    s->abandoned = true;
    posix::shutdown_both(s->end.get());
    finish();
  }
  sender.drain();
  MPI_Finalize();
  std::exit(0);
}

void stop_at_exit() {
  // The pools first (their workers are sessions of the hub), then the hub, then MPI.
  if (detail::stop_pools_at_exit) detail::stop_pools_at_exit();
  Hub::get().stop();
  if (mpi_live()) MPI_Finalize();
}

extern "C" void stop_at_exit_c() {
  stop_at_exit();
}

std::shared_ptr<detail::Transport> transport(int asked) {
  if (g_size < 2)
    throw ProcessError(
        "mp::mpi: no worker ranks (a job of one rank: run it under mpiexec -n 2 or more, "
        "and call mp::mpi::init first)");
  if (asked > g_size - 1)
    throw ProcessError("mp::mpi: " + std::to_string(asked) + " workers asked of a job with " +
                       std::to_string(g_size - 1) + " worker ranks");
  static const auto t = std::make_shared<MpiTransport>();
  return t;
}

// Every rank's build-id and pid, gathered on rank 0.
struct Hello {
  char build[112] = {};
  std::int64_t pid = 0;
};

}  // namespace

void init(int& argc, char**& argv) {
  mp::init(argc, argv);
  int already = 0;
  MPI_Initialized(&already);
  if (already) return;
  int provided = 0;
  // Rank 0: main()'s thread calls init and finalize, the hub every call between: one at a
  // time, never at once (SERIALIZED). Worker ranks: the pump only.
  check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  std::set_terminate(on_terminate);
  if (provided < MPI_THREAD_SERIALIZED) {
    std::cerr << "mp::mpi: this MPI library does not allow MPI_THREAD_SERIALIZED" << std::endl;
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  Hello mine;
  const std::string build = detail::this_build_id();
  std::snprintf(mine.build, sizeof mine.build, "%s", build.c_str());
  mine.pid = posix::getpid();
  std::vector<Hello> all(std::size_t(g_rank == 0 ? g_size : 0));
  MPI_Gather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
  int bad = 0;  // the first rank of another build, 0: none
  if (g_rank == 0) {
    for (int r = 1; r < g_size && !bad; ++r)
      if (std::strncmp(all[std::size_t(r)].build, mine.build, sizeof mine.build) != 0) bad = r;
    for (auto& h : all) g_pids.push_back(int(h.pid));
  }
  MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (bad) {
    // Every rank leaves; rank 0 says why (an uncaught error: the job ends with it).
    const std::string other = g_rank == 0 ? all[std::size_t(bad)].build : "";
    MPI_Finalize();
    if (g_rank != 0)
      std::exit(0);  // quietly: rank 0 reports it (a failing rank would end
                     // the job before rank 0 could say why)
    g_size = 1;
    throw ProcessError("mp::mpi: rank " + std::to_string(bad) +
                       " runs another build of the program (build-id " + other + "; rank 0's " +
                       build + "): every rank must run the same binary");
  }
  if (g_rank != 0) serve_rank();
  if (g_size > 1) Hub::get().start_thread();
  std::atexit(stop_at_exit_c);
}

int rank() {
  return g_rank;
}
int size() {
  return g_size;
}
int workers() {
  return g_size - 1;
}

Pool::Pool(PoolOptions options)
    : mp::Pool(
          [&] {
            if (!options.processes) options.processes = std::max(1, workers());
            options.context = nullptr;
            return options;
          }(),
          transport(options.processes.value_or(workers()))) {}

Executor::Executor(ExecutorOptions options)
    : mp::ProcessPoolExecutor(
          [&] {
            if (!options.max_workers) options.max_workers = std::max(1, workers());
            options.mp_context = nullptr;
            return options;
          }(),
          transport(options.max_workers.value_or(workers()))) {}

}  // namespace mp::mpi
