// multiprocess: Python's multiprocessing in C++20. Include this one header.
#pragma once

#include "mp/connection.hpp"
#include "mp/context.hpp"
#include "mp/errors.hpp"
#include "mp/executor.hpp"
#include "mp/listener.hpp"
#include "mp/managers.hpp"
#include "mp/pool.hpp"
#include "mp/process.hpp"
#include "mp/queues.hpp"
#include "mp/reduction.hpp"
#include "mp/resource_tracker.hpp"
#include "mp/shared.hpp"
#include "mp/shared_memory.hpp"
#include "mp/spawn.hpp"
#include "mp/synchronize.hpp"
#include "mp/tasks.hpp"
