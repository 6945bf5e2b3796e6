#include "comm/rendezvous.h"

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "comm/communicator.h"
#include "comm/rendezvous_store.h"
#include "runtime/error_text.h"

namespace troupe::comm {

Rendezvous::Rendezvous(std::shared_ptr<Store> store, std::chrono::milliseconds timeout, std::string local_host)
    : store_(std::move(store)), timeout_(timeout), operation_timeout_(timeout), local_host_(std::move(local_host)) {
  store_->store->setTimeout(timeout);
}

Rendezvous::~Rendezvous() = default;

std::shared_ptr<Rendezvous> Rendezvous::from_store(std::shared_ptr<Store> store, std::chrono::milliseconds timeout,
                                                   std::string local_host) {
  return std::shared_ptr<Rendezvous>(new Rendezvous(std::move(store), timeout, std::move(local_host)));
}

std::shared_ptr<Rendezvous> Rendezvous::in_process(std::chrono::milliseconds timeout) {
  auto store = std::make_shared<Store>(Store{c10::make_intrusive<c10d::HashStore>()});
  return std::shared_ptr<Rendezvous>(new Rendezvous(std::move(store), timeout, "127.0.0.1"));
}

void Rendezvous::set(const std::string& key, const std::string& value) {
  store_->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
}

std::string Rendezvous::get(const std::string& key) {
  try {
    const auto bytes = store_->store->get(key);
    return {bytes.begin(), bytes.end()};
  } catch (const std::exception& e) {
    throw CommError("rendezvous: no value for '" + key + "' within " + std::to_string(timeout_.count()) +
                    " ms (a rank did not arrive): " + runtime::error_text(e));
  }
}

}  // namespace troupe::comm
