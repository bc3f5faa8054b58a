// Contexts and the default start method (CPython TestStartMethod).
#include "support.hpp"

using namespace mp_test;

namespace {

void report_method(std::string out) {
  Channel::send(out, mp::get_start_method());
}

TEST(Context, EachContextStartsItsOwnMethod) {
  for (std::string m : {"fork", "spawn", "forkserver"}) {
    const auto& ctx = mp::get_context(m);
    EXPECT_EQ(ctx.get_start_method(), m);
    EXPECT_EQ(&ctx.get_context(), &ctx);
    Channel out;
    auto p = ctx.Process(report_method, out.path());
    p.start();
    EXPECT_EQ(out.recv(), m) << "a child's default start method is the one that made it";
    p.join(kHang);
  }
}

TEST(Context, Errors) {
  EXPECT_EQ(logic_text([] { mp::get_context("fork").set_start_method("spawn"); }),
            "cannot set start method of concrete context");
  EXPECT_EQ(logic_text([] { (void)mp::get_context("bogus"); }), "cannot find context for 'bogus'");
}

TEST(Context, SetAndGetTheDefault) {
  const auto saved = mp::get_start_method(true);
  mp::set_start_method(std::nullopt, true);
  EXPECT_EQ(mp::get_start_method(true), std::nullopt);
  mp::set_start_method("fork");
  EXPECT_EQ(mp::get_start_method(), "fork");
  EXPECT_EQ(mp::get_all_start_methods().front(), "fork");
  try {
    mp::set_start_method("spawn");
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "context has already been set");
  }
  mp::set_start_method("spawn", true);
  EXPECT_EQ(mp::get_start_method(), "spawn");
  mp::set_start_method(std::nullopt, true);
  EXPECT_EQ(mp::get_start_method(), "forkserver") << "get_start_method() fixes the default";
  EXPECT_EQ(mp::get_start_method(true), "forkserver");
  auto all = mp::get_all_start_methods();
  EXPECT_EQ(all.front(), "forkserver");
  EXPECT_EQ(all.size(), 3u);
  EXPECT_NE(std::find(all.begin(), all.end(), "fork"), all.end());
  EXPECT_NE(std::find(all.begin(), all.end(), "spawn"), all.end());
  mp::set_start_method(saved, true);
}

TEST(Context, ContextProcessNames) {
  auto f = mp::fork_context.Process([] {});
  auto s = mp::spawn_context.Process(+[] {});
  EXPECT_EQ(f.name().rfind("ForkProcess-", 0), 0u) << f.name();
  EXPECT_EQ(s.name().rfind("SpawnProcess-", 0), 0u) << s.name();
  EXPECT_EQ(s.repr().rfind("<SpawnProcess name=", 0), 0u) << s;
}

TEST(Reduction, AuthkeyRefusesToBePickledOutsideSpawning) {
  std::string bytes;
  mp::reduction::OutArchive ar(bytes);
  EXPECT_EQ(logic_text([&] { ar(mp::current_process().authkey()); }),
            "Pickling an AuthenticationString object is disallowed for security reasons");
}

}  // namespace
