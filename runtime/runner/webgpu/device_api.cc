// device_api.cc — TVM's DeviceAPI for kDLWebGPU ("device_api.webgpu"): memory, copies, the
// stream, a workspace pool and the device's attributes, on the one device of context.h.
//
// A tensor's data pointer on this device is its WGPUBuffer (opaque to the host: offsets travel as
// byte_offset and as the kernels' *_elem_offset arguments, as on OpenCL). All work goes to one
// queue: the stream handle is ignored, and StreamSync submits the batch and waits for the device.
//
// Also registers edgesmith.webgpu.device_info(), .adapters() and .report() (JSON strings): what the
// runner prints about the device, what `devices` lists, and how many pipelines were built; and
// .timestamps(on) / .kernel_times(), the kernel times `runner kernels` reads from timestamp queries.

#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/device_api.h>

#include <map>
#include <mutex>
#include <string>

#include "context.h"
#include "pipelines.h"

namespace edgesmith {
namespace wgpu {

using tvm::runtime::DeviceAPI;
using tvm::runtime::DeviceAttrKind;

static WGPUBuffer buf(const void* p) { return static_cast<WGPUBuffer>(const_cast<void*>(p)); }

class WebGPUDeviceAPI final : public DeviceAPI {
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
    Context& ctx = Context::get();
    const WGPULimits& l = ctx.limits;
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock: *rv = static_cast<int64_t>(l.maxComputeInvocationsPerWorkgroup); break;
      case tvm::runtime::kWarpSize: *rv = int64_t(1); break;  // no subgroup shuffles assumed
      case tvm::runtime::kMaxSharedMemoryPerBlock: *rv = static_cast<int64_t>(l.maxComputeWorkgroupStorageSize); break;
      case tvm::runtime::kDeviceName: *rv = tvm::ffi::String(ctx.facts.name); break;
      case tvm::runtime::kMaxThreadDimensions:
        *rv = tvm::ffi::String("[" + std::to_string(l.maxComputeWorkgroupSizeX) + ", " +
                               std::to_string(l.maxComputeWorkgroupSizeY) + ", " +
                               std::to_string(l.maxComputeWorkgroupSizeZ) + "]");
        break;
      case tvm::runtime::kDriverVersion: *rv = tvm::ffi::String(ctx.facts.driver); break;
      case tvm::runtime::kApiVersion: *rv = tvm::ffi::String(ctx.facts.backend); break;
      default: break;  // clock rate, memory size, ...: WebGPU does not say
    }
  }

  void* AllocDataSpace(DLDevice dev, size_t nbytes, size_t, DLDataType) final {
    check_id(dev);
    return Context::get().alloc(nbytes);
  }

  void* AllocDataSpace(DLDevice dev, int ndim, const int64_t* shape, DLDataType dtype,
                       tvm::ffi::Optional<tvm::ffi::String> mem_scope) final {
    if (mem_scope.has_value() && !mem_scope.value().empty() && mem_scope.value() != "global")
      fail("memory scope '" + std::string(mem_scope.value()) + "' is not supported by edgesmith's WebGPU runtime "
           "(plain storage buffers only)");
    return DeviceAPI::AllocDataSpace(dev, ndim, shape, dtype, mem_scope);
  }

  void FreeDataSpace(DLDevice, void* ptr) final {
    if (Context::ready()) Context::get().release(buf(ptr));
  }

  void StreamSync(DLDevice dev, TVMStreamHandle) final {
    check_id(dev);
    Context::get().sync();
  }

  // Workspaces (TVMBackendAllocWorkspace: a kernel's global scratch) come and go on every call:
  // kept in a pool by size instead of a new buffer each time.
  void* AllocWorkspace(DLDevice dev, size_t nbytes, DLDataType) final {
    check_id(dev);
    std::lock_guard<std::mutex> lock(pool_mu_);
    auto it = free_.lower_bound(nbytes);
    if (it != free_.end() && it->first <= 2 * nbytes + 4096) {
      WGPUBuffer b = it->second;
      in_use_[b] = it->first;
      free_.erase(it);
      return b;
    }
    size_t rounded = (nbytes + 4095) / 4096 * 4096;
    WGPUBuffer b = Context::get().alloc(rounded);
    in_use_[b] = rounded;
    return b;
  }

  void FreeWorkspace(DLDevice, void* ptr) final {
    std::lock_guard<std::mutex> lock(pool_mu_);
    auto it = in_use_.find(buf(ptr));
    if (it == in_use_.end()) fail("FreeWorkspace of a buffer the workspace pool did not hand out");
    free_.emplace(it->second, it->first);
    in_use_.erase(it);
  }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset, size_t nbytes,
                      DLDevice dev_from, DLDevice dev_to, DLDataType, TVMStreamHandle) final {
    if (nbytes == 0) return;
    Context& ctx = Context::get();
    bool from_gpu = dev_from.device_type == kDLWebGPU, to_gpu = dev_to.device_type == kDLWebGPU;
    if (from_gpu && to_gpu) {
      ctx.on_device(buf(from), from_offset, buf(to), to_offset, nbytes);
    } else if (from_gpu && dev_to.device_type == kDLCPU) {
      ctx.to_host(static_cast<char*>(to) + to_offset, buf(from), from_offset, nbytes);
    } else if (to_gpu && dev_from.device_type == kDLCPU) {
      ctx.to_device(buf(to), to_offset, static_cast<const char*>(from) + from_offset, nbytes);
    } else {
      fail("copy between device types " + std::to_string(dev_from.device_type) + " and " +
           std::to_string(dev_to.device_type) + " is not supported by the WebGPU runtime");
    }
  }

 private:
  static void check_id(DLDevice dev) {
    if (dev.device_id != 0)
      fail("WebGPU device " + std::to_string(dev.device_id) + " asked for; this runtime uses one device (id 0), "
           "chosen with EDGESMITH_WEBGPU_ADAPTER");
  }

  std::mutex pool_mu_;
  std::multimap<size_t, WGPUBuffer> free_;
  std::map<WGPUBuffer, size_t> in_use_;
};

// The runtime keeps the pointer for the life of the process.
static WebGPUDeviceAPI* g_api = new WebGPUDeviceAPI();

static std::string report() {
  std::string out = "{\"adapter\": ";
  out += Context::ready() ? Context::get().facts.json() : "null";
  out += ", \"pipelines\": " + pipeline_stats().json();
  if (Context::ready()) {
    Context& ctx = Context::get();
    out += ", \"allocated_bytes\": " + std::to_string(ctx.allocated_bytes()) +
           ", \"dispatches\": " + std::to_string(ctx.dispatches()) + ", \"submits\": " + std::to_string(ctx.submits());
  }
  return out + "}";
}

static std::string adapters() {
  std::string out = "[";
  std::vector<AdapterFacts> all = list_adapters();
  for (size_t i = 0; i < all.size(); ++i) out += (i ? ", " : "") + all[i].json();
  return out + "]";
}

namespace {
struct Register {
  Register() {
    using tvm::ffi::Function;
    Function::SetGlobal("device_api.webgpu", Function::FromTyped([]() -> void* { return g_api; }), true);
    Function::SetGlobal("edgesmith.webgpu.device_info",
                        Function::FromTyped([]() -> tvm::ffi::String { return Context::get().facts.json(); }), true);
    Function::SetGlobal("edgesmith.webgpu.adapters", Function::FromTyped([]() -> tvm::ffi::String { return adapters(); }),
                        true);
    Function::SetGlobal("edgesmith.webgpu.report", Function::FromTyped([]() -> tvm::ffi::String { return report(); }),
                        true);
    // `runner kernels`: kernel times from timestamp queries where the adapter has them
    Function::SetGlobal("edgesmith.webgpu.timestamps",
                        Function::FromTyped([](bool on) -> bool { return Context::get().set_timestamps(on); }), true);
    Function::SetGlobal("edgesmith.webgpu.kernel_times",
                        Function::FromTyped([]() -> tvm::ffi::String { return Context::get().take_kernel_times(); }),
                        true);
  }
} register_device_api;
}  // namespace

}  // namespace wgpu
}  // namespace edgesmith
