// The c10d store behind a Rendezvous; only the engines' sources include this.
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "comm/rendezvous.h"

namespace troupe::comm {

struct Rendezvous::Store {
  c10::intrusive_ptr<c10d::Store> store;
};

}  // namespace troupe::comm
