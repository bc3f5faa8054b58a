// Must not compile: the item type has no serializer (and is not trivially copyable), so a put
// could only drop it.
#include <mp/mp.hpp>

#include <string>

struct NoSerializer {
  std::string text;
};

int main() {
  mp::Queue<NoSerializer> q;
  q.put(NoSerializer{"lost?"});
  return q.empty();
}
