#include "actors/key_value_store.h"

#include <map>

#include "actors/key_value_store_protocol.h"

namespace troupe::actors {

namespace {

struct kv_state {
  std::map<std::string, std::string> values;
  std::multimap<std::string, caf::response_promise> waiting;  // gets for keys not yet set
};

using self_ptr = caf::stateful_actor<kv_state>*;

void store(self_ptr self, const std::string& key, std::string value) {
  auto& st = self->state;
  st.values[key] = value;
  auto [first, last] = st.waiting.equal_range(key);
  for (auto it = first; it != last; ++it) it->second.deliver(value);
  st.waiting.erase(first, last);
}

caf::behavior key_value_store(self_ptr self) {
  return {
      [=](kv_set_atom, const std::string& key, std::string value) {
        store(self, key, std::move(value));
        return true;
      },
      [=](kv_get_atom, const std::string& key) -> caf::result<std::string> {
        auto& st = self->state;
        if (auto it = st.values.find(key); it != st.values.end()) return it->second;
        auto promise = self->make_response_promise();
        st.waiting.emplace(key, promise);
        return caf::delegated<std::string>();
      },
      [=](kv_add_atom, const std::string& key, int64_t delta) {
        auto& st = self->state;
        const auto it = st.values.find(key);
        const int64_t now = (it == st.values.end() ? 0 : std::stoll(it->second)) + delta;
        store(self, key, std::to_string(now));
        return now;
      },
      [=](kv_cas_atom, const std::string& key, const std::string& expected, std::string desired) {
        auto& st = self->state;
        const auto it = st.values.find(key);
        if ((it == st.values.end() && expected.empty()) || (it != st.values.end() && it->second == expected)) {
          store(self, key, desired);
          return desired;
        }
        return it == st.values.end() ? expected : it->second;
      },
      [=](kv_check_atom, const std::vector<std::string>& keys) {
        for (const auto& k : keys)
          if (!self->state.values.count(k)) return false;
        return true;
      },
      [=](kv_del_atom, const std::string& key) { return self->state.values.erase(key) > 0; },
      [=](kv_count_atom) { return static_cast<int64_t>(self->state.values.size()); },
  };
}

}  // namespace

caf::actor spawn_key_value_store(caf::actor_system& sys) { return sys.spawn(key_value_store); }

}  // namespace troupe::actors
