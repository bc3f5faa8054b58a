// Floor 2 of process_start: a C++ program that does nothing and does not link multiprocess, so
// the cost of loading the library (or anything it pulls in) cannot hide in the floor.
int main() {}
