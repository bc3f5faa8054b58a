// Exceptions of multiprocess: Python's names, C++ shapes.
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>

namespace mp {

/// Base of the library's runtime errors (Python's multiprocessing.ProcessError).
class ProcessError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A bounded wait ran out (multiprocessing.TimeoutError).
class TimeoutError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// A peer failed the authkey challenge (multiprocessing.AuthenticationError).
class AuthenticationError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// A receive buffer was too small; the message is kept (multiprocessing.BufferTooShort).
class BufferTooShort : public ProcessError {
 public:
  explicit BufferTooShort(std::string message)
      : ProcessError("BufferTooShort"), message_(std::move(message)) {}
  /// The whole message that did not fit.
  const std::string& message() const noexcept { return message_; }

 private:
  std::string message_;
};

/// An object cannot cross to a child (pickle.PicklingError): no serializer, or a capturing lambda.
class PicklingError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// A queue had no item within the timeout, or at once for get_nowait() (Python's queue.Empty).
/// From std::runtime_error, not ProcessError: in Python it is not a multiprocessing error either.
class Empty : public std::runtime_error {
 public:
  Empty() : std::runtime_error("Empty") {}
};

/// A bounded queue had no room within the timeout, or at once for put_nowait() (queue.Full).
class Full : public std::runtime_error {
 public:
  Full() : std::runtime_error("Full") {}
};

/// A Future was cancelled before it ran (concurrent.futures.CancelledError).
class CancelledError : public std::runtime_error {
 public:
  CancelledError() : std::runtime_error("CancelledError") {}
};

/// A named thing that is not there (Python's FileNotFoundError): a std::system_error with
/// ENOENT whose what() is CPython's "[Errno 2] No such file or directory: 'name'", then why.
class FileNotFoundError : public std::system_error {
 public:
  FileNotFoundError(std::string filename, const std::string& why)
      : std::system_error(static_cast<int>(std::errc::no_such_file_or_directory),
                          std::system_category()),
        filename_(std::move(filename)),
        what_("[Errno 2] No such file or directory: '" + filename_ + "'" +
              (why.empty() ? "" : ": " + why)) {}
  const char* what() const noexcept override { return what_.c_str(); }
  /// The missing name (Python's .filename).
  const std::string& filename() const noexcept { return filename_; }

 private:
  std::string filename_;
  std::string what_;
};

/// A pool can run no more tasks (concurrent.futures.process.BrokenProcessPool): its initializer
/// failed, its workers kept dying at start-up, or it was terminated ("pool terminated").
class BrokenProcessPool : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// The worker running a task died (a signal, an exit, mp::exit in the task): that task (with
/// chunks: its chunk) fails with this; the pool replaces the worker and goes on.
class WorkerLost : public BrokenProcessPool {
 public:
  WorkerLost(int pid, int exitcode, std::size_t index)
      : BrokenProcessPool("the worker (pid " + std::to_string(pid) + ") running task " +
                          std::to_string(index) + " died (exit code " + std::to_string(exitcode) +
                          (exitcode < 0 ? ": killed by a signal" : "") + ")"),
        pid_(pid),
        exitcode_(exitcode),
        index_(index) {}
  int pid() const noexcept { return pid_; }
  /// As Process::exitcode(): -N for a signal N.
  int exitcode() const noexcept { return exitcode_; }
  /// The input position of the (first) item the lost task held.
  std::size_t index() const noexcept { return index_; }

 private:
  int pid_, exitcode_;
  std::size_t index_;
};

/// A task threw in a worker: the exception's type name and what(), the worker's pid and the
/// input position of the item (CPython re-raises the same type with a RemoteTraceback cause; a
/// C++ exception's type cannot be rebuilt in general, so it arrives as this, always).
class RemoteError : public ProcessError {
 public:
  RemoteError(std::string type, std::string message, int pid, std::size_t index)
      : ProcessError(type + ": " + message + " (in worker pid " + std::to_string(pid) + ", task " +
                     std::to_string(index) + ")"),
        type_(std::move(type)),
        message_(std::move(message)),
        pid_(pid),
        index_(index) {}
  /// A manager's served method threw: "... (in the manager's server pid N, method 'get')";
  /// index() is 0.
  static RemoteError in_manager(std::string type, std::string message, int pid,
                                const std::string& method) {
    RemoteError e(std::move(type), std::move(message), pid, 0);
    static_cast<ProcessError&>(e) =
        ProcessError(e.type_ + ": " + e.message_ + " (in the manager's server pid " +
                     std::to_string(pid) + ", method '" + method + "')");
    return e;
  }
  /// The remote exception's type ("std::runtime_error") and what().
  const std::string& type_name() const noexcept { return type_; }
  const std::string& message() const noexcept { return message_; }
  int pid() const noexcept { return pid_; }
  std::size_t index() const noexcept { return index_; }

 private:
  std::string type_, message_;
  int pid_;
  std::size_t index_;
};

/// A task's result could not be serialized in the worker (multiprocessing.pool.
/// MaybeEncodingError): "Error sending result: '<value>'. Reason: '<error>'", where <value> is
/// the result's type name (C++ has no repr) and <error> the serializer's exception.
class MaybeEncodingError : public ProcessError {
 public:
  MaybeEncodingError(std::string value, std::string exc)
      : ProcessError("Error sending result: '" + value + "'. Reason: '" + exc + "'"),
        value_(std::move(value)),
        exc_(std::move(exc)) {}
  const std::string& value() const noexcept { return value_; }
  const std::string& exc() const noexcept { return exc_; }

 private:
  std::string value_, exc_;
};

/// Ends the current child process with `code()` (Python's SystemExit). Deliberately not a
/// std::exception, so `catch (const std::exception&)` does not swallow it, as in Python.
class SystemExit {
 public:
  /// Exit code n (0 when none is given).
  explicit SystemExit(int code = 0) : code_(code) {}
  /// A message: printed to stderr, exit code 1 (Python's sys.exit("text")).
  explicit SystemExit(std::string message) : message_(std::move(message)) {}
  std::optional<int> code() const { return message_ ? std::nullopt : std::optional<int>(code_); }
  const std::optional<std::string>& message() const { return message_; }

 private:
  int code_ = 0;
  std::optional<std::string> message_;
};

/// End this process with exit code `code`: inside a child's run() it throws SystemExit (stack
/// unwinds, the parent sees `code`); elsewhere it flushes the streams and exits.
[[noreturn]] void exit(int code = 0);

}  // namespace mp
