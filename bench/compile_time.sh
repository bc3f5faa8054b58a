#!/bin/sh
# Compile time of a user's translation unit (not a test): hello world, <mp/process.hpp> with a
# Process taking an int, and the umbrella <mp/mp.hpp> as in the README; each compiled as a user
# would (g++ -std=c++20 -O0 -c), the median of a few runs: wall time, CPU time (user+sys; steadier
# than wall time on a shared machine) and peak compiler memory.
#   bench/compile_time.sh [repetitions, default 5] [include dir, default ./include]
# CXX and CXXFLAGS override the compiler and its flags.
set -eu
cd "$(dirname "$0")/.."
reps=${1:-5}
inc=$(cd "${2:-include}" && pwd)
cxx=${CXX:-g++}
flags=${CXXFLAGS:--std=c++20 -O0}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

cat >"$dir/hello.cpp" <<'CPP'
#include <iostream>
int main() { std::cout << "hello\n"; }
CPP
cat >"$dir/process.cpp" <<'CPP'
#include <mp/process.hpp>
int work(int n) { return n; }
int main() {
  mp::Process p(work, 42);
  p.start();
  p.join();
}
CPP
cat >"$dir/umbrella.cpp" <<'CPP'
#include <mp/mp.hpp>
int work(int n, std::string tag) { return n + static_cast<int>(tag.size()); }
int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Process p(work, 42, "hello");
  p.start();
  p.join();
  std::cout << p << '\n';
}
CPP

# Prints "wall cpu kib" for the median run (by CPU time) of compiling $1.
measure() {
  i=0
  while [ "$i" -lt "$reps" ]; do
    # shellcheck disable=SC2086
    /usr/bin/time -f '%e %U %S %M' -o "$dir/t" $cxx $flags -I"$inc" -c "$1" -o "$dir/o.o"
    awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }' "$dir/t"
    i=$((i + 1))
  done | sort -n -k2 | sed -n "$(((reps + 1) / 2))p"
}

echo "$cxx $flags, $reps runs each, median; include: $inc"
printf '%-14s %8s %8s %8s %9s\n' "" "wall s" "cpu s" "MiB" "cpu/hello"
base=""
for tu in hello process umbrella; do
  # shellcheck disable=SC2046
  set -- $(measure "$dir/$tu.cpp")
  [ -n "$base" ] || base=$2
  printf '%-14s %8.2f %8.2f %8d %8.1fx\n' "$tu.cpp" "$1" "$2" "$(($3 / 1024))" \
    "$(echo "$2 $base" | awk '{ print $1 / $2 }')"
done
