// The test binary is its own spawned child: mp::init must come before anything else.
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include <gtest/gtest.h>
#include <mp/mp.hpp>

#include "forkserver.hpp"
#include "resource_tracker.hpp"
#include "support.hpp"

namespace mp_test {
static std::string g_self;
static std::atomic<int> g_alarms{0};
extern "C" void count_alarm(int) {
  g_alarms.fetch_add(1, std::memory_order_relaxed);
}

void arm_alarm_storm() {
  struct sigaction sa {};
  sa.sa_handler = count_alarm;  // no SA_RESTART
  ::sigaction(SIGALRM, &sa, nullptr);
  itimerval timer{{0, 100}, {0, 100}};
  ::setitimer(ITIMER_REAL, &timer, nullptr);
}
int alarms_received() {
  return g_alarms.load();
}

std::string helper_path(const std::string& name) {
  return (std::filesystem::path(g_self).parent_path() / name).string();
}
}  // namespace mp_test

namespace {
// After the whole suite: no descriptor and no child may have leaked.
class LeakCheck : public ::testing::Environment {
 public:
  void SetUp() override { fds_ = mp_test::open_fd_count(); }
  void TearDown() override {
    mp::detail::forkserver_stop();        // it lives until exit otherwise, holding two descriptors
    mp::detail::resource_tracker_stop();  // likewise, one
    EXPECT_EQ(mp_test::open_fd_count(), fds_) << "descriptors leaked by the suite";
    siginfo_t info{};
    int r = ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
    EXPECT_TRUE(r < 0 ? errno == ECHILD : info.si_pid == 0)
        << "a child was left unreaped: pid " << info.si_pid;
    // Nor one still running: any process whose parent we are.
    for (auto& e : std::filesystem::directory_iterator("/proc")) {
      const auto name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string line;
      std::getline(stat, line);
      auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      std::string state;
      int ppid = 0;
      rest >> state >> ppid;
      EXPECT_NE(ppid, ::getpid()) << "a child still runs: pid " << name;
    }
  }

 private:
  int fds_ = 0;
};

// Repeats every failure's message after the summary: a CI log cut to its tail still says why.
class FailureRecap : public ::testing::EmptyTestEventListener {
 public:
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    recap_ << "[ recap ] " << test_ << " at " << (r.file_name() ? r.file_name() : "?") << ":"
           << r.line_number() << "\n"
           << r.message() << "\n";
  }
  void OnTestProgramEnd(const ::testing::UnitTest&) override {
    if (!recap_.str().empty()) std::fprintf(stderr, "%s", recap_.str().c_str());
  }

 private:
  std::string test_;
  std::ostringstream recap_;
};
}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("MP_TEST_ALARM_STORM")) mp_test::arm_alarm_storm();
  mp::init(argc, argv);
  mp_test::g_self = mp::get_executable();
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new LeakCheck);
  ::testing::UnitTest::GetInstance()->listeners().Append(new FailureRecap);
  return RUN_ALL_TESTS();
}
