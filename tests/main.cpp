// The test binary is its own spawned child: mp::init must come before anything else.
#include <sys/wait.h>

#include <gtest/gtest.h>
#include <mp/mp.hpp>

#include "posix/forkserver.hpp"
#include "support.hpp"

namespace mp_test {
static std::string g_self;
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
    mp::posix::forkserver_stop();  // it lives until exit otherwise, holding two descriptors
    EXPECT_EQ(mp_test::open_fd_count(), fds_) << "descriptors leaked by the suite";
    siginfo_t info{};
    int r = ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
    EXPECT_TRUE(r < 0 ? errno == ECHILD : info.si_pid == 0)
        << "a child was left unreaped: pid " << info.si_pid;
  }

 private:
  int fds_ = 0;
};
}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp_test::g_self = mp::get_executable();
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new LeakCheck);
  return RUN_ALL_TESTS();
}
