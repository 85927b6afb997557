// context.h (context.cc, batch.cc) — the one WebGPU device this process runs on (through wgpu-native, on Vulkan; Metal
// on macOS): which adapter, its facts and limits, its memory, and the one queue all work goes to.
//
// Adapter choice ($EDGESMITH_WEBGPU_ADAPTER):
//   unset / auto   the first discrete GPU, else integrated, else any other (lavapipe: Mesa's
//                  Vulkan on the CPU, on a machine without a GPU)
//   gpu | cpu      the first adapter of that kind (gpu: discrete or integrated); none is an error
//   N              adapter N in the order `edgesmith.webgpu.adapters()` lists them
// $EDGESMITH_WEBGPU_F16=off: the device without shader-f16 even where the adapter has it.
//
// Work is batched as TVM's own WebGPU runtime (web/src/webgpu.ts) does: dispatches are recorded
// into one pending command encoder, their scalar (POD) arguments into one uniform arena, and the
// batch is submitted when the host needs the device's results (a copy to the host, StreamSync),
// before a write from the host (queue writes run before the next submission), or when the arena
// is full.

#ifndef EDGESMITH_WEBGPU_CONTEXT_H_
#define EDGESMITH_WEBGPU_CONTEXT_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "wgpu_api.h"

namespace edgesmith {
namespace wgpu {

struct AdapterFacts {
  std::string name, vendor, architecture, driver, backend, type;
  uint32_t vendor_id = 0, device_id = 0;
  bool f16 = false;         // shader-f16: WGSL `enable f16;` (q4f16 bundles)
  bool timestamps = false;  // timestamp-query
  WGPULimits limits{};
  std::string json() const;
};

// Facts of every adapter wgpu finds (for `devices`, the probe and the error that lists them).
std::vector<AdapterFacts> list_adapters();

class Context {
 public:
  // The process's device, set up on first use; throws WebGPUError (no library, no adapter, ...)
  // and tries again on the next call.
  static Context& get();
  static bool ready();

  WGPUInstance instance = nullptr;
  WGPUAdapter adapter = nullptr;
  WGPUDevice device = nullptr;
  WGPUQueue queue = nullptr;
  AdapterFacts facts;
  WGPULimits limits{};  // the device's (the adapter's best, requested at creation)

  // Storage buffers (usable as kernel arguments and copy source/target), `nbytes` rounded up to 4.
  WGPUBuffer alloc(size_t nbytes);
  void release(WGPUBuffer buffer);
  size_t size_of(WGPUBuffer buffer) const;
  size_t allocated_bytes() const { return allocated_; }

  // Copies; offsets and sizes in bytes, any alignment (WebGPU's are 4-byte: the rest goes through
  // the host). to_host waits for the device; the others are ordered after every earlier dispatch.
  void to_device(WGPUBuffer dst, size_t offset, const void* src, size_t nbytes);
  void to_host(void* dst, WGPUBuffer src, size_t offset, size_t nbytes);
  void on_device(WGPUBuffer src, size_t src_offset, WGPUBuffer dst, size_t dst_offset, size_t nbytes);

  // One dispatch, recorded into the pending batch. `pod` is the uniform struct's bytes.
  void dispatch(const std::string& kernel, WGPUComputePipeline pipeline, WGPUBindGroupLayout layout,
                const std::vector<WGPUBuffer>& buffers, const std::vector<uint32_t>& pod, const uint32_t grid[3]);
  // Submit the pending batch (no wait).
  void flush();
  // Submit, then wait until the device is idle.
  void sync();

  // Errors the device raised outside an error scope (a dispatch that failed validation, a lost
  // device) surface here as WebGPUError at the next sync.
  void check_uncaptured();
  // Runs `make` inside validation and out-of-memory error scopes; a captured error fails with
  // "<what> failed: <wgpu's message>".
  template <typename F>
  auto scoped(const std::string& what, F make) -> decltype(make());

  // Kernel times from timestamp queries (the adapter's timestamp-query feature): while on, each
  // dispatch's pass writes a timestamp at its start and end, and every submission waits to read
  // them back. Returns false (and stays off) on an adapter without timestamps.
  bool set_timestamps(bool on);
  // {"kernel": [calls, seconds], ...} of the dispatches timed since the last call (then reset).
  std::string take_kernel_times();

  int64_t dispatches() const { return dispatches_; }
  int64_t submits() const { return submits_; }

 private:
  Context() = default;
  void init();
  void push_scopes();
  void pop_scopes(const std::string& what);
  void wait_for(const bool* done);
  WGPUCommandEncoder encoder();
  WGPUBuffer staging(size_t nbytes);

  mutable std::recursive_mutex mu_;  // one thread records and submits at a time
  std::unordered_map<WGPUBuffer, size_t> sizes_;
  size_t allocated_ = 0;
  WGPUCommandEncoder pending_ = nullptr;
  std::vector<uint8_t> arena_host_;  // the batch's POD structs, one slot each
  WGPUBuffer arena_ = nullptr;
  size_t arena_capacity_ = 0, slot_ = 256;
  WGPUBuffer staging_ = nullptr;
  size_t staging_size_ = 0;
  int64_t dispatches_ = 0, submits_ = 0;
  std::vector<WGPUBindGroup> used_groups_;  // released once their batch is submitted
  // timestamp queries (set_timestamps)
  void read_timestamps();
  bool timing_ = false;
  WGPUQuerySet queries_ = nullptr;
  WGPUBuffer query_resolve_ = nullptr, query_read_ = nullptr;
  uint32_t query_pairs_ = 1024;
  std::vector<std::string> timed_;  // the kernel of each query pair in the pending batch
  std::map<std::string, std::pair<int64_t, double>> kernel_times_;
};

template <typename F>
auto Context::scoped(const std::string& what, F make) -> decltype(make()) {
  push_scopes();
  auto result = make();
  pop_scopes(what);
  return result;
}

// What went wrong outside a scope (set by the device's callbacks).
std::string& uncaptured_error();

std::string mib(double bytes);                  // "12.3 MiB"
std::string json_string(const std::string& s);  // a JSON string literal

// What the runner counts (../plugin_counts.h): a kernel launched; the host about to wait for the device.
void note_launch();
void note_host_wait();

}  // namespace wgpu
}  // namespace edgesmith

#endif  // EDGESMITH_WEBGPU_CONTEXT_H_
