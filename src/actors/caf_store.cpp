#include "actors/caf_store.h"

#include <caf/all.hpp>

#include "actors/key_value_store_protocol.h"
#include "comm/communicator.h"
#include "comm/rendezvous_store.h"

namespace troupe::actors {

namespace {

using namespace troupe::actors;

// c10d's store interface over blocking requests to the key-value actor. Only the rendezvous
// uses it (start-up), so a scoped actor's round trip per call costs nothing that matters.
class CafStore : public c10d::Store {
 public:
  CafStore(caf::actor_system& sys, caf::actor kv, std::chrono::milliseconds timeout)
      : sys_(sys), kv_(std::move(kv)) {
    timeout_ = timeout;
  }

  c10::intrusive_ptr<c10d::Store> clone() override { return c10::make_intrusive<CafStore>(sys_, kv_, timeout_); }

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    ask<bool>(key, kv_set_atom::value, key, bytes(value));
  }

  std::vector<uint8_t> compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                  const std::vector<uint8_t>& desired) override {
    return vec(ask<std::string>(key, kv_cas_atom::value, key, bytes(expected), bytes(desired)));
  }

  std::vector<uint8_t> get(const std::string& key) override { return vec(ask<std::string>(key, kv_get_atom::value, key)); }

  int64_t add(const std::string& key, int64_t value) override { return ask<int64_t>(key, kv_add_atom::value, key, value); }

  bool deleteKey(const std::string& key) override { return ask<bool>(key, kv_del_atom::value, key); }

  bool check(const std::vector<std::string>& keys) override { return ask<bool>("check", kv_check_atom::value, keys); }

  int64_t getNumKeys() override { return ask<int64_t>("count", kv_count_atom::value); }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& k : keys) ask_within<std::string>(timeout, k, kv_get_atom::value, k);
  }

 private:
  static std::string bytes(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }
  static std::vector<uint8_t> vec(const std::string& s) { return {s.begin(), s.end()}; }

  template <class T, class... Ts>
  T ask(const std::string& key, Ts&&... xs) {
    return ask_within<T>(timeout_, key, std::forward<Ts>(xs)...);
  }

  template <class T, class... Ts>
  T ask_within(std::chrono::milliseconds timeout, const std::string& key, Ts&&... xs) {
    caf::scoped_actor self{sys_};
    T result{};
    std::string error;
    self->request(kv_, timeout, std::forward<Ts>(xs)...)
        .receive([&](T value) { result = std::move(value); }, [&](caf::error& err) { error = sys_.render(err); });
    if (!error.empty())
      throw comm::CommError("rendezvous store (CAF): '" + key + "' not answered within " + std::to_string(timeout.count()) +
                      " ms (a rank did not arrive or node 0 is gone): " + error);
    return result;
  }

  caf::actor_system& sys_;
  caf::actor kv_;
};

}  // namespace

std::shared_ptr<comm::Rendezvous> make_caf_rendezvous(caf::actor_system& sys, caf::actor kv, std::chrono::milliseconds timeout,
                                                std::string local_host) {
  auto store = std::make_shared<comm::Rendezvous::Store>(comm::Rendezvous::Store{c10::make_intrusive<CafStore>(sys, std::move(kv), timeout)});
  return comm::Rendezvous::from_store(std::move(store), timeout, std::move(local_host));
}

}  // namespace troupe::actors
