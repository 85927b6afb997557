// context.h — the one OpenCL device this process runs on: which one, its facts, its context and
// in-order command queue, and its memory (every buffer is counted, so running out is one clear
// line before the driver fails somewhere less readable).
//
// Device choice ($EDGESMITH_OPENCL_DEVICE):
//   unset / auto   the first GPU of any platform, else the first accelerator, else the first
//                  device of any kind (PoCL's CPU device on a machine without a GPU)
//   gpu | cpu      the first device of that kind; none is an error
//   P:D            platform P's device D (indices as clinfo -l lists them)

#ifndef EDGESMITH_OPENCL_CONTEXT_H_
#define EDGESMITH_OPENCL_CONTEXT_H_

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cl_api.h"

namespace edgesmith {
namespace ocl {

struct DeviceFacts {
  std::string platform, platform_version, name, vendor, version, driver, opencl_c, extensions;
  cl_device_type type = 0;
  cl_uint vendor_id = 0, compute_units = 0, max_clock_mhz = 0;
  size_t max_work_group = 0;
  std::vector<size_t> max_item_sizes;
  cl_ulong global_mem = 0, max_alloc = 0, local_mem = 0, cache_bytes = 0;
  bool fp16 = false;  // cl_khr_fp16: float16 arithmetic in kernels (q4f16 bundles)

  const char* type_name() const;
  // What a compiled program binary depends on: platform, device, driver (the cache key).
  std::string identity() const;
  std::string json() const;
};

class Context {
 public:
  // The process's device, set up on first use; throws OpenCLError (no library, no platform, no
  // device, ...) and tries again on the next call.
  static Context& get();
  // Set up already (without trying)?
  static bool ready();

  cl_context context = nullptr;
  cl_command_queue queue = nullptr;
  cl_device_id device = nullptr;
  DeviceFacts facts;

  // Buffers of `nbytes` (0 is given 1 byte: OpenCL has no empty buffer); the error when the
  // device cannot hold it says how much is in use and what the device has.
  cl_mem alloc(size_t nbytes);
  void release(cl_mem buffer);
  size_t allocated_bytes() const { return allocated_; }

  // err != CL_SUCCESS -> OpenCLError "<what> failed: CL_..." (out-of-memory codes say so plainly).
  void check(cl_int err, const std::string& what) const;
  std::string out_of_memory(const std::string& what, size_t more_bytes) const;

 private:
  Context() = default;
  void init();
  mutable std::mutex mu_;
  std::unordered_map<cl_mem, size_t> sizes_;
  size_t allocated_ = 0;
};

// What the runner counts (../plugin_counts.h): a kernel launched; the host about to wait for the device.
void note_launch();
void note_host_wait();

}  // namespace ocl
}  // namespace edgesmith

#endif  // EDGESMITH_OPENCL_CONTEXT_H_
