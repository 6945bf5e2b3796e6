#include "checkpoint/rng_state.h"

#include <torch/torch.h>
#include <ATen/core/Generator.h>

#include <mutex>
#include <stdexcept>

namespace troupe::checkpoint {

namespace {

std::string hex_of(const at::Tensor& bytes) {
  static const char digits[] = "0123456789abcdef";
  const auto* p = bytes.data_ptr<uint8_t>();
  std::string out;
  out.reserve(2 * static_cast<size_t>(bytes.numel()));
  for (int64_t i = 0; i < bytes.numel(); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

at::Tensor bytes_of(const std::string& hex, const std::string& where) {
  auto value = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw std::runtime_error(where + ": not hex");
  };
  if (hex.size() % 2) throw std::runtime_error(where + ": odd number of hex digits");
  auto out = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
  auto* p = out.data_ptr<uint8_t>();
  for (size_t i = 0; i < hex.size(); i += 2) p[i / 2] = static_cast<uint8_t>(value(hex[i]) * 16 + value(hex[i + 1]));
  return out;
}

at::Generator generator_for(const std::string& name, const std::string& where) {
  if (name == "cpu") return at::detail::getDefaultCPUGenerator();
  if (name.starts_with("cuda:")) {
    const auto index = static_cast<c10::DeviceIndex>(std::stoi(name.substr(5)));
    if (!torch::cuda::is_available() || index >= static_cast<c10::DeviceIndex>(torch::cuda::device_count()))
      throw std::runtime_error(where + ": generator '" + name + "' was saved but this machine has no such GPU");
    return at::globalContext().defaultGenerator(at::Device(at::kCUDA, index));
  }
  throw std::runtime_error(where + ": unknown generator '" + name + "'");
}

}  // namespace

std::map<std::string, std::string> capture_rng() {
  std::vector<std::string> names{"cpu"};
  if (torch::cuda::is_available())
    for (size_t i = 0; i < torch::cuda::device_count(); ++i) names.push_back("cuda:" + std::to_string(i));
  std::map<std::string, std::string> out;
  for (const auto& name : names) {
    auto gen = generator_for(name, "capture_rng");
    std::lock_guard<std::mutex> lock(gen.mutex());
    out[name] = hex_of(gen.get_state());
  }
  return out;
}

void restore_rng(const std::map<std::string, std::string>& states, const std::string& where) {
  for (const auto& [name, hex] : states) {
    auto gen = generator_for(name, where);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(bytes_of(hex, where + ": generator '" + name + "'"));
  }
}

}  // namespace troupe::checkpoint
