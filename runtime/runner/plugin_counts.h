// plugin_counts.h — what a device plug-in (opencl/, webgpu/) counts for the runner, whose decode
// steps read the differences (profiling.h, DeviceCounts): kernels launched; times the host waited
// for the device; and of those, the stalls: waits with a kernel launched since the previous wait,
// i.e. the host waiting on kernels, not only on a copy. One queue with no host sync between
// kernels shows as one stall a decoded token (its logits' read).
//
// Header-only; each plug-in holds its own instance and registers it under its API's name.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include <tvm/ffi/function.h>

namespace edgesmith {

struct PluginCounts {
  std::atomic<int64_t> launches{0}, host_waits{0}, stalls{0}, launches_at_wait{0};

  void launch() { launches.fetch_add(1, std::memory_order_relaxed); }

  void host_wait() {
    host_waits.fetch_add(1, std::memory_order_relaxed);
    int64_t launched = launches.load(std::memory_order_relaxed);
    if (launches_at_wait.exchange(launched, std::memory_order_relaxed) != launched)
      stalls.fetch_add(1, std::memory_order_relaxed);
  }

  // edgesmith.<api>.launches / .host_waits / .stalls, each returning its count since start
  void register_as(const std::string& api) {
    namespace ffi = tvm::ffi;
    ffi::Function::SetGlobal("edgesmith." + api + ".launches",
                             ffi::Function::FromTyped([this]() -> int64_t { return launches.load(); }), true);
    ffi::Function::SetGlobal("edgesmith." + api + ".host_waits",
                             ffi::Function::FromTyped([this]() -> int64_t { return host_waits.load(); }), true);
    ffi::Function::SetGlobal("edgesmith." + api + ".stalls",
                             ffi::Function::FromTyped([this]() -> int64_t { return stalls.load(); }), true);
  }
};

}  // namespace edgesmith
