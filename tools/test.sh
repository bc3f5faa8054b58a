#!/bin/sh
# Fresh Debian 12 machine -> the whole test suite: a normal build, the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer, and a consumer project built against the
# installed package (CMake and pkg-config), and a bounded libFuzzer run (clang); and every
# benchmark run briefly (tools/report.sh --smoke), so that none rots.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh cmake ninja-build g++ libcereal-dev nettle-dev libgtest-dev pkg-config python3 \
  openmpi-bin libopenmpi-dev

echo "== build and test (RelWithDebInfo)"
cmake --preset default >/dev/null
cmake --build --preset default
ctest --preset default

# In the tree just built (RelWithDebInfo will do: nothing is timed), so that only the benchmarks
# compile; libbenchmark-dev is installed by tools/report.sh, Boost's queue floor is left out when
# libboost-dev is missing.
echo "== every benchmark and CPython script in smoke mode (each runs and prints its tables)"
BUILD=build/default sh tools/report.sh --smoke

echo "== build and test under ASan + UBSan"
cmake --preset asan >/dev/null
cmake --build --preset asan
ctest --preset asan

# (The 1 GiB queue item is left to the other runs: ThreadSanitizer makes its copies crawl.)
echo "== the synchronisation, queue and pool suites under ThreadSanitizer (threads inside processes)"
cmake --preset tsan >/dev/null
cmake --build --preset tsan
# die_after_fork=0: a manager's server forked from a process with threads (a manager's reader
# thread lingers 0.1 s after its async calls) starts threads of its own, which TSan refuses
# by default.
TSAN_OPTIONS="halt_on_error=1 die_after_fork=0 suppressions=$(pwd)/tools/tsan.supp" ./build/tsan/tests/mp_tests \
  --gtest_filter='Lock.*:RLock.*:Semaphore.*:Condition.*:Event.*:Barrier.*:Sync.*:*SyncAcross*:Queue.*:*QueueAcross*:QueueProcesses.*:*PoolAcross*:Pool.*:*ExecutorAcross*:Executor.*:*Manager*:-QueueProcesses.AGibibyte*'

echo "== install, then build a consumer project against the installed package"
prefix=$(pwd)/build/install
rm -rf "$prefix" build/consumer
cmake --install build/default --prefix "$prefix" >/dev/null
cmake -S tests/consumer -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/consumer
./build/consumer/consumer
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" \
  g++ tests/consumer/main.cpp $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs multiprocess) \
  -o build/consumer/consumer_pc
./build/consumer/consumer_pc
# The optional MPI component (built: Open MPI is among the packages above), both ways, on 2 ranks.
mpiexec="mpiexec --oversubscribe --allow-run-as-root -n 2"
rm -rf build/consumer_mpi
cmake -S tests/consumer_mpi -B build/consumer_mpi -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/consumer_mpi
timeout -k 5 60 $mpiexec ./build/consumer_mpi/consumer_mpi
g++ tests/consumer_mpi/main.cpp \
  $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs multiprocess-mpi) \
  -o build/consumer_mpi/consumer_mpi_pc
timeout -k 5 60 $mpiexec ./build/consumer_mpi/consumer_mpi_pc
echo "== fuzz the fork server's request decoder, the handshake, connection frames and queue records (bounded)"
sh tools/fuzz.sh 30
echo "== all tests passed"
