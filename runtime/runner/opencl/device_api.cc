// device_api.cc — TVM's DeviceAPI for kDLOpenCL ("device_api.opencl"): memory, copies, the
// stream, a workspace pool and the device's attributes, on the one device of context.h.
//
// A tensor's data pointer on this device is its cl_mem (opaque to the host: TVM never does
// arithmetic on it, SupportsDevicePointerArithmeticsOnHost() is false; offsets travel as
// byte_offset and as the kernels' *_elem_offset arguments). All work goes to one in-order queue:
// the stream handle is ignored, and StreamSync is clFinish.
//
// Also registers edgesmith.opencl.device_info() and edgesmith.opencl.report() (JSON strings):
// what the runner prints about the device, and how many programs were compiled or cached.

#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/device_api.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "context.h"
#include "programs.h"

namespace edgesmith {
namespace ocl {

using tvm::runtime::DeviceAPI;
using tvm::runtime::DeviceAttrKind;

class OpenCLDeviceAPI final : public DeviceAPI {
 public:
  using DeviceAPI::AllocDataSpace;
  using DeviceAPI::CopyDataFromTo;

  void SetDevice(DLDevice dev) final { check_id(dev); }

  void GetAttr(DLDevice dev, DeviceAttrKind kind, tvm::ffi::Any* rv) final {
    if (kind == tvm::runtime::kExist) {  // asked to find out, not to fail
      try {
        Context::get();
        *rv = static_cast<int64_t>(dev.device_id == 0);
      } catch (const tvm::ffi::Error&) {
        *rv = int64_t(0);
      }
      return;
    }
    check_id(dev);
    const DeviceFacts& f = Context::get().facts;
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock: *rv = static_cast<int64_t>(f.max_work_group); break;
      case tvm::runtime::kWarpSize: *rv = int64_t(1); break;  // no subgroup shuffles assumed
      case tvm::runtime::kMaxSharedMemoryPerBlock: *rv = static_cast<int64_t>(f.local_mem); break;
      case tvm::runtime::kComputeVersion: *rv = tvm::ffi::String(f.opencl_c); break;
      case tvm::runtime::kDeviceName: *rv = tvm::ffi::String(f.name); break;
      case tvm::runtime::kMaxClockRate: *rv = static_cast<int64_t>(f.max_clock_mhz) * 1000; break;  // kHz
      case tvm::runtime::kMultiProcessorCount: *rv = static_cast<int64_t>(f.compute_units); break;
      case tvm::runtime::kMaxThreadDimensions: {
        std::string dims = "[";
        for (size_t i = 0; i < f.max_item_sizes.size(); ++i) dims += (i ? ", " : "") + std::to_string(f.max_item_sizes[i]);
        *rv = tvm::ffi::String(dims + "]");
        break;
      }
      case tvm::runtime::kApiVersion: *rv = tvm::ffi::String(f.version); break;
      case tvm::runtime::kDriverVersion: *rv = tvm::ffi::String(f.driver); break;
      case tvm::runtime::kL2CacheSizeBytes: *rv = static_cast<int64_t>(f.cache_bytes); break;
      case tvm::runtime::kTotalGlobalMemory: *rv = static_cast<int64_t>(f.global_mem); break;
      case tvm::runtime::kAvailableGlobalMemory:
        *rv = static_cast<int64_t>(f.global_mem - Context::get().allocated_bytes());
        break;
      default: break;  // kMaxRegistersPerBlock, kGcnArch, kImagePitchAlignment: not OpenCL's to say
    }
  }

  void* AllocDataSpace(DLDevice dev, size_t nbytes, size_t alignment, DLDataType) final {
    check_id(dev);
    (void)alignment;  // buffers start at the driver's base alignment (CL_DEVICE_MEM_BASE_ADDR_ALIGN)
    return Context::get().alloc(nbytes);
  }

  void* AllocDataSpace(DLDevice dev, int ndim, const int64_t* shape, DLDataType dtype,
                       tvm::ffi::Optional<tvm::ffi::String> mem_scope) final {
    if (mem_scope.has_value() && !mem_scope.value().empty() && mem_scope.value() != "global")
      fail("memory scope '" + std::string(mem_scope.value()) + "' (OpenCL images) is not supported by edgesmith's "
           "OpenCL runtime; compile the bundle for a preset whose kernels use plain buffers");
    return DeviceAPI::AllocDataSpace(dev, ndim, shape, dtype, mem_scope);
  }

  void FreeDataSpace(DLDevice, void* ptr) final {
    if (Context::ready()) Context::get().release(static_cast<cl_mem>(ptr));
  }

  void StreamSync(DLDevice dev, TVMStreamHandle) final {
    check_id(dev);
    Context& ctx = Context::get();
    note_host_wait();
    ctx.check(api().clFinish(ctx.queue), "waiting for the device (clFinish)");
    drop_staged();
  }

  // Workspaces (TVMBackendAllocWorkspace: a kernel's global scratch) come and go on every call:
  // kept in a pool by size instead of a clCreateBuffer each time.
  void* AllocWorkspace(DLDevice dev, size_t nbytes, DLDataType) final {
    check_id(dev);
    std::lock_guard<std::mutex> lock(pool_mu_);
    auto it = free_.lower_bound(nbytes);
    if (it != free_.end() && it->first <= 2 * nbytes + 4096) {
      cl_mem buffer = it->second;
      in_use_[buffer] = it->first;
      free_.erase(it);
      return buffer;
    }
    size_t rounded = (nbytes + 4095) / 4096 * 4096;
    cl_mem buffer = Context::get().alloc(rounded);
    in_use_[buffer] = rounded;
    return buffer;
  }

  void FreeWorkspace(DLDevice, void* ptr) final {
    std::lock_guard<std::mutex> lock(pool_mu_);
    auto it = in_use_.find(static_cast<cl_mem>(ptr));
    if (it == in_use_.end()) fail("FreeWorkspace of a buffer the workspace pool did not hand out");
    free_.emplace(it->second, it->first);
    in_use_.erase(it);
  }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset, size_t nbytes,
                      DLDevice dev_from, DLDevice dev_to, DLDataType, TVMStreamHandle) final {
    if (nbytes == 0) return;
    Context& ctx = Context::get();
    const Api& cl = api();
    bool from_cl = dev_from.device_type == kDLOpenCL, to_cl = dev_to.device_type == kDLOpenCL;
    if (from_cl && to_cl) {
      ctx.check(cl.clEnqueueCopyBuffer(ctx.queue, static_cast<cl_mem>(const_cast<void*>(from)), static_cast<cl_mem>(to),
                                       from_offset, to_offset, nbytes, 0, nullptr, nullptr),
                "copying on the device (clEnqueueCopyBuffer)");
    } else if (from_cl && dev_to.device_type == kDLCPU) {
      // blocking: the host reads it next; the in-order queue runs it after every kernel before it
      note_host_wait();
      ctx.check(cl.clEnqueueReadBuffer(ctx.queue, static_cast<cl_mem>(const_cast<void*>(from)), CL_TRUE, from_offset,
                                       nbytes, static_cast<char*>(to) + to_offset, 0, nullptr, nullptr),
                "copying to the host (clEnqueueReadBuffer)");
      drop_staged();
    } else if (to_cl && dev_from.device_type == kDLCPU) {
      const char* src = static_cast<const char*>(from) + from_offset;
      if (nbytes <= kStagedMax) {  // the KV cache's index arrays, a token's ids: queued, not waited for
        ctx.check(cl.clEnqueueWriteBuffer(ctx.queue, static_cast<cl_mem>(to), CL_FALSE, to_offset, nbytes, stage(src, nbytes),
                                          0, nullptr, nullptr),
                  "copying to the device (clEnqueueWriteBuffer)");
        return;
      }
      // blocking (weights at load): the host memory may be gone once this returns; it waits for
      // every kernel queued before it (a stall when one was)
      note_host_wait();
      ctx.check(cl.clEnqueueWriteBuffer(ctx.queue, static_cast<cl_mem>(to), CL_TRUE, to_offset, nbytes, src, 0, nullptr,
                                        nullptr),
                "copying to the device (clEnqueueWriteBuffer)");
      drop_staged();
    } else {
      fail("copy between device types " + std::to_string(dev_from.device_type) + " and " +
           std::to_string(dev_to.device_type) + " is not supported by the OpenCL runtime");
    }
  }

 private:
  // Small host-to-device copies are not waited for: a decode step's copies (the KV cache's index
  // arrays, synced after the token's first kernels are queued, and the token's ids) would each make
  // the host wait for the kernels queued before them. Their bytes are copied into staging memory
  // kept until the queue has surely run the copy: every host wait here (clFinish, a blocking read
  // or write) drains the in-order queue. Large copies (weights at load) block instead, so their
  // bytes are never held twice; past kStagedLimit held, one clFinish frees the staging.
  static constexpr size_t kStagedMax = size_t(64) << 10, kStagedLimit = size_t(16) << 20;

  const void* stage(const char* src, size_t nbytes) {
    std::lock_guard<std::mutex> lock(stage_mu_);
    if (staged_bytes_ + nbytes > kStagedLimit) {
      note_host_wait();
      Context& ctx = Context::get();
      ctx.check(api().clFinish(ctx.queue), "waiting for the device (clFinish)");
      staged_.clear(), staged_bytes_ = 0;
    }
    staged_.emplace_back(src, src + nbytes);
    staged_bytes_ += nbytes;
    return staged_.back().data();
  }

  void drop_staged() {
    std::lock_guard<std::mutex> lock(stage_mu_);
    staged_.clear(), staged_bytes_ = 0;
  }

  static void check_id(DLDevice dev) {
    if (dev.device_id != 0)
      fail("OpenCL device " + std::to_string(dev.device_id) + " asked for; this runtime uses one device (id 0), "
           "chosen with EDGESMITH_OPENCL_DEVICE");
  }

  std::mutex pool_mu_, stage_mu_;
  std::vector<std::vector<char>> staged_;  // each copy's bytes, until the next host wait
  size_t staged_bytes_ = 0;
  std::multimap<size_t, cl_mem> free_;
  std::map<cl_mem, size_t> in_use_;
};

// The runtime keeps the pointer for the life of the process.
static OpenCLDeviceAPI* g_api = new OpenCLDeviceAPI();

static std::string report() {
  std::string out = "{\"device\": ";
  out += Context::ready() ? Context::get().facts.json() : "null";
  out += ", \"programs\": " + program_stats().json();
  if (Context::ready()) out += ", \"allocated_bytes\": " + std::to_string(Context::get().allocated_bytes());
  return out + "}";
}

namespace {
struct Register {
  Register() {
    using tvm::ffi::Function;
    Function::SetGlobal("device_api.opencl", Function::FromTyped([]() -> void* { return g_api; }), true);
    Function::SetGlobal("edgesmith.opencl.device_info",
                        Function::FromTyped([]() -> tvm::ffi::String { return Context::get().facts.json(); }), true);
    Function::SetGlobal("edgesmith.opencl.report", Function::FromTyped([]() -> tvm::ffi::String { return report(); }),
                        true);
  }
} register_device_api;
}  // namespace

}  // namespace ocl
}  // namespace edgesmith
