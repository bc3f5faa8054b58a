// The same Pool and executor across the ranks of an MPI job (component multiprocess::mpi;
// mpi4py.futures' MPIPoolExecutor is the model). Run the program under mpiexec:
//
//   int main(int argc, char** argv) {
//     mp::mpi::init(argc, argv);   // ranks >= 1 serve tasks here and never return
//     mp::mpi::Pool pool;          // one worker per rank >= 1
//     auto squares = pool.map(square, std::vector{1, 2, 3});
//   }
//
// mp::mpi::Pool is an mp::Pool and mp::mpi::Executor an mp::ProcessPoolExecutor: the same
// methods, results, errors and futures, on the same engine; only how a task reaches a worker
// differs (MPI messages to a rank instead of a socket to a local process). Tasks cross as in
// spawn: the same binary runs on every rank (build-ids checked by init()), and a task is a
// plain function or a captureless lambda with serializable arguments and result.
//
// Faults: a task's exception fails its future only (mp::RemoteError, as locally). A rank that
// dies ends the whole job (Open MPI 4.1 has no fault tolerance), and so does an uncaught
// exception on rank 0 (MPI_Abort after printing it: never a hung job). docs/cluster.md.
#pragma once

#include <memory>

#include "mp/executor.hpp"
#include "mp/pool.hpp"

namespace mp::mpi {

/// The first statement of main() (it calls mp::init first). Under mpiexec -n N: on rank 0
/// it returns, and main() goes on as the client; every other rank checks in with rank 0,
/// then serves tasks until rank 0 ends, and exits without returning. Rank 0 checks that every
/// rank runs the same build (build-id) and throws mp::ProcessError naming the rank that does
/// not. Without mpiexec it returns: a job of one rank, with no workers.
void init(int& argc, char**& argv);
/// This process's rank, and the job's size (1 before init() or without mpiexec).
int rank();
int size();
/// The worker ranks: size() - 1.
int workers();

/// mp::Pool over the worker ranks: one worker per rank >= 1 (PoolOptions::processes: at most
/// workers(), default all of them; context is ignored). With no worker rank (mpiexec -n 1)
/// it throws mp::ProcessError("mp::mpi: no worker ranks (...)"): it does not fall back to
/// local processes. One Pool or Executor at a time uses a rank.
class Pool : public mp::Pool {
 public:
  explicit Pool(PoolOptions options = {});
};

/// mp::ProcessPoolExecutor over the worker ranks (max_workers: at most workers(), default all
/// of them), as Pool above.
class Executor : public mp::ProcessPoolExecutor {
 public:
  explicit Executor(ExecutorOptions options = {});
};

}  // namespace mp::mpi
