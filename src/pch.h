// Precompiled header: libtorch and CAF are by far the slowest includes of the build.
#pragma once
#include <torch/torch.h>
#include <caf/all.hpp>
