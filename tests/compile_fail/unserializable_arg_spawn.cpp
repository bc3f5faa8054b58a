// Must NOT compile: an argument type without a serializer under a typed spawn context.
#include <mp/mp.hpp>

struct NoSerializer {
  int x = 0;
};
void work(NoSerializer) {}

int main() {
  auto p = mp::spawn_context.Process(work, NoSerializer{});
  p.start();
}
