#!/bin/sh
# One command for the whole performance picture: builds the benchmarks (Release, build/bench),
# runs every part of bench/ and CPython's equivalents side by side in one run (bench/run.sh), and
# writes docs/performance.md with its charts in docs/performance/*.svg (gnuplot, installed when
# missing) and README.md's summary block, all from that run's results (tools/report.py). A full
# run takes about 15 minutes on 2 cores; run it on a quiet machine.
#   sh tools/report.sh [Google Benchmark flags]
#   sh tools/report.sh --smoke
# --smoke: every case a few iterations (about a minute), to check that each benchmark runs and
# prints its tables, never how fast: the page goes to build/report-smoke/ labelled as a smoke
# run, README.md and docs/ are left alone, and it fails if a part or a case did not run.
# tools/test.sh runs it in the build tree of its tests.
# Environment: BUILD (default build/bench; a tree already configured keeps its build type and
# options, e.g. tools/test.sh's build/default for --smoke), PYTHON (as bench/run.sh).
set -eu
cd "$(dirname "$0")/.."
smoke=""
if [ "${1:-}" = --smoke ]; then
  smoke=1
  shift
fi
sh tools/deps.sh cmake ninja-build g++ libcereal-dev nettle-dev libbenchmark-dev pkg-config python3
if [ -n "$smoke" ]; then
  out=build/report-smoke
  page=$out/performance.md
  charts=$out/performance
  readme=""
else
  # gnuplot only for the real page: the smoke run writes the charts' scripts, but CI need not
  # install a plotter to check that the benchmarks run.
  sh tools/deps.sh gnuplot-nox
  out=build/report
  page=docs/performance.md
  charts=docs/performance
  readme=README.md
fi
rm -rf "$out"
mkdir -p "$out"
# The commit the benchmarks are built from, taken now: the page names it, whatever changes later.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] ||
  commit="$commit (with uncommitted changes)"
echo "$commit" >"$out/commit"

# The run's output is kept: the smoke check reads each part's tables from it. The status goes
# through a file, as a pipeline's is tee's.
{
  status=0
  OUT=$out SMOKE=$smoke sh bench/run.sh "$@" || status=$?
  echo "$status" >"$out/run.status"
} 2>&1 | tee "$out/run.log"
status=$(cat "$out/run.status")
if [ "$status" != 0 ]; then
  echo "bench/run.sh failed ($status); see $out/run.log" >&2
  exit 1
fi

python=${PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
echo
echo "== tools/report.py"
# shellcheck disable=SC2046 # the optional flags are meant to split
"$python" tools/report.py --results "$out" --build "${BUILD:-build/bench}" --page "$page" \
  --charts "$charts" --log "$out/run.log" \
  $([ -n "$smoke" ] && echo --smoke) $([ -n "$readme" ] && echo "--readme $readme")
