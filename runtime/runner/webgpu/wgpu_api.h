// wgpu_api.h — the part of wgpu-native's C API (webgpu.h + wgpu.h) the plug-in uses, loaded at
// run time.
//
// The plug-in links no WebGPU library: it dlopen()s libwgpu_native.so when the device is first
// used ($EDGESMITH_WGPU_LIBRARY, else the one next to the plug-in, which the bundle ships from the
// registry's `wgpu` wheel for its architecture, else the loader's search path), so a bundle starts
// on a machine without it and says so in one line. The declarations are the wheel's own headers
// (compiled with -I<wgpu package>/resources); the pointers below take their types from them.

#ifndef EDGESMITH_WEBGPU_WGPU_API_H_
#define EDGESMITH_WEBGPU_WGPU_API_H_

#include <string>

#include "webgpu.h"
#include "wgpu.h"

namespace edgesmith {
namespace wgpu {

#define EDGESMITH_WGPU_FUNCTIONS(X)                                                                       \
  X(wgpuCreateInstance) X(wgpuInstanceRelease) X(wgpuInstanceEnumerateAdapters) X(wgpuInstanceProcessEvents) \
  X(wgpuAdapterGetInfo) X(wgpuAdapterInfoFreeMembers) X(wgpuAdapterGetLimits) X(wgpuAdapterHasFeature)     \
  X(wgpuAdapterRequestDevice) X(wgpuAdapterRelease) X(wgpuDeviceGetQueue) X(wgpuDeviceGetLimits)          \
  X(wgpuDeviceHasFeature) X(wgpuDevicePushErrorScope) X(wgpuDevicePopErrorScope) X(wgpuDevicePoll)        \
  X(wgpuDeviceCreateBuffer) X(wgpuBufferDestroy) X(wgpuBufferRelease) X(wgpuBufferMapAsync)               \
  X(wgpuBufferGetConstMappedRange) X(wgpuBufferUnmap) X(wgpuDeviceCreateShaderModule)                     \
  X(wgpuShaderModuleRelease) X(wgpuDeviceCreateBindGroupLayout) X(wgpuBindGroupLayoutRelease)             \
  X(wgpuDeviceCreatePipelineLayout) X(wgpuPipelineLayoutRelease) X(wgpuDeviceCreateComputePipeline)       \
  X(wgpuComputePipelineRelease) X(wgpuDeviceCreateBindGroup) X(wgpuBindGroupRelease)                      \
  X(wgpuDeviceCreateCommandEncoder) X(wgpuCommandEncoderRelease) X(wgpuCommandEncoderBeginComputePass)    \
  X(wgpuCommandEncoderCopyBufferToBuffer) X(wgpuCommandEncoderFinish) X(wgpuCommandBufferRelease)         \
  X(wgpuCommandEncoderResolveQuerySet) X(wgpuComputePassEncoderSetPipeline)                               \
  X(wgpuComputePassEncoderSetBindGroup) X(wgpuComputePassEncoderDispatchWorkgroups)                       \
  X(wgpuComputePassEncoderEnd) X(wgpuComputePassEncoderRelease) X(wgpuQueueWriteBuffer) X(wgpuQueueSubmit) \
  X(wgpuQueueRelease) X(wgpuDeviceCreateQuerySet) X(wgpuQuerySetRelease) X(wgpuQueueGetTimestampPeriod)   \
  X(wgpuGetVersion)

struct Api {
#define EDGESMITH_WGPU_POINTER(name) decltype(&::name) name = nullptr;
  EDGESMITH_WGPU_FUNCTIONS(EDGESMITH_WGPU_POINTER)
#undef EDGESMITH_WGPU_POINTER
  std::string path;  // the library that was loaded
};

// The loaded API; throws WebGPUError (no library, or one without these functions) and tries again
// on the next call.
const Api& api();

// Throws tvm::ffi::Error of kind "WebGPUError" (the runner prints it as "runner: WebGPU: ...").
[[noreturn]] void fail(const std::string& message);

inline WGPUStringView sv(const std::string& s) { return WGPUStringView{s.data(), s.size()}; }
inline std::string str(WGPUStringView v) {
  if (!v.data) return "";
  return v.length == WGPU_STRLEN ? std::string(v.data) : std::string(v.data, v.length);
}

}  // namespace wgpu
}  // namespace edgesmith

#endif  // EDGESMITH_WEBGPU_WGPU_API_H_
