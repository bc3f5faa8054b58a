// Must NOT compile: a field in MP_FIELDS whose type has no serializer. Our static_assert comes
// first and the error names the field's type, before (and instead of) cereal's own.
#include <mp/mp.hpp>

struct NoSerializer {
  int x = 0;
};

struct MyProc : mp::Process {
  int n = 0;
  NoSerializer field;
  void run() override {}
  MP_FIELDS(MyProc, n, field)
};

int main() {
  MyProc p;
  p.start();
}
