// How the ranks of a job find each other before any communicator exists: a key-value store
// every rank can reach. Ranks in one process share an in-memory store; ranks on several nodes
// use node 0's key-value store actor over CAF (comm/caf_store.h). Communicators publish their connection details
// (Gloo addresses, the NCCL unique id) in it under their group's name.
#pragma once
#include <chrono>
#include <memory>
#include <string>

namespace troupe::comm {

class Rendezvous {
 public:
  // Every local rank of this process shares the returned object.
  static std::shared_ptr<Rendezvous> in_process(std::chrono::milliseconds timeout);

  struct Store;  // c10d's store, kept out of this header
  static std::shared_ptr<Rendezvous> from_store(std::shared_ptr<Store> store, std::chrono::milliseconds timeout,
                                                std::string local_host);

  ~Rendezvous();
  void set(const std::string& key, const std::string& value);
  // Blocks until the key exists; CommError after the timeout.
  std::string get(const std::string& key);
  std::chrono::milliseconds timeout() const { return timeout_; }
  // How long one collective may take once connected (comm.train_timeout_seconds).
  std::chrono::milliseconds operation_timeout() const { return operation_timeout_; }
  void set_operation_timeout(std::chrono::milliseconds t) { operation_timeout_ = t; }
  // The address this node's ranks listen on for Gloo's connections; empty: the host name's.
  const std::string& local_host() const { return local_host_; }

  std::shared_ptr<Store> store() const { return store_; }

 private:
  Rendezvous(std::shared_ptr<Store> store, std::chrono::milliseconds timeout, std::string local_host);
  std::shared_ptr<Store> store_;
  std::chrono::milliseconds timeout_, operation_timeout_;
  std::string local_host_;
};

}  // namespace troupe::comm
