// context.cc — choosing the adapter, creating the device, error scopes, its memory (the batch, the
// timestamps and the copies: batch.cc).

#include "context.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace edgesmith {
namespace wgpu {

using Lock = std::lock_guard<std::recursive_mutex>;

std::string& uncaptured_error() {
  static std::string message;
  return message;
}

std::string mib(double bytes) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f MiB", bytes / (1 << 20));
  return buf;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

std::string AdapterFacts::json() const {
  std::ostringstream o;
  o << "{\"name\": " << json_string(name) << ", \"vendor\": " << json_string(vendor)
    << ", \"architecture\": " << json_string(architecture) << ", \"driver\": " << json_string(driver)
    << ", \"backend\": " << json_string(backend) << ", \"type\": " << json_string(type)
    << ", \"vendor_id\": " << vendor_id << ", \"device_id\": " << device_id
    << ", \"shader_f16\": " << (f16 ? "true" : "false") << ", \"timestamp_query\": " << (timestamps ? "true" : "false")
    << ", \"limits\": {\"max_buffer_size\": " << limits.maxBufferSize
    << ", \"max_storage_buffer_binding_size\": " << limits.maxStorageBufferBindingSize
    << ", \"max_storage_buffers_per_shader_stage\": " << limits.maxStorageBuffersPerShaderStage
    << ", \"max_compute_invocations_per_workgroup\": " << limits.maxComputeInvocationsPerWorkgroup
    << ", \"max_compute_workgroup_storage_size\": " << limits.maxComputeWorkgroupStorageSize
    << ", \"max_compute_workgroups_per_dimension\": " << limits.maxComputeWorkgroupsPerDimension << "}}";
  return o.str();
}

static const char* backend_name(WGPUBackendType b) {
  switch (b) {
    case WGPUBackendType_Vulkan: return "vulkan";
    case WGPUBackendType_Metal: return "metal";
    case WGPUBackendType_D3D12: return "d3d12";
    case WGPUBackendType_OpenGL: case WGPUBackendType_OpenGLES: return "gl";
    default: return "other";
  }
}

static const char* type_name(WGPUAdapterType t) {
  switch (t) {
    case WGPUAdapterType_DiscreteGPU: return "discrete-gpu";
    case WGPUAdapterType_IntegratedGPU: return "integrated-gpu";
    case WGPUAdapterType_CPU: return "cpu";
    default: return "unknown";
  }
}

static AdapterFacts read_facts(WGPUAdapter adapter) {
  const Api& w = api();
  AdapterFacts f;
  WGPUAdapterInfo info{};
  if (w.wgpuAdapterGetInfo(adapter, &info) == WGPUStatus_Success) {
    f.name = str(info.device), f.vendor = str(info.vendor), f.architecture = str(info.architecture);
    f.driver = str(info.description), f.backend = backend_name(info.backendType), f.type = type_name(info.adapterType);
    f.vendor_id = info.vendorID, f.device_id = info.deviceID;
    w.wgpuAdapterInfoFreeMembers(info);
  }
  w.wgpuAdapterGetLimits(adapter, &f.limits);
  f.f16 = w.wgpuAdapterHasFeature(adapter, WGPUFeatureName_ShaderF16);
  f.timestamps = w.wgpuAdapterHasFeature(adapter, WGPUFeatureName_TimestampQuery);
  return f;
}

// Vulkan on Linux and Android, Metal on Apple: the APIs the bundles are for (no GL fallback,
// whose compute support is partial).
static WGPUInstanceBackend wanted_backends() {
#if defined(__APPLE__)
  return WGPUInstanceBackend_Metal;
#else
  return WGPUInstanceBackend_Vulkan;
#endif
}

// wgpu's Vulkan instance asks libwayland whether a Wayland display is there; with neither
// WAYLAND_DISPLAY nor XDG_RUNTIME_DIR set (a headless board, ssh, CI) libwayland prints "error:
// XDG_RUNTIME_DIR is invalid" on every call. An absolute WAYLAND_DISPLAY that does not exist makes
// the same answer (no display) silent; it is set only while the instance is made.
struct QuietWayland {
  bool set = false;
  QuietWayland() {
    if (!std::getenv("WAYLAND_DISPLAY") && !std::getenv("XDG_RUNTIME_DIR"))
      set = setenv("WAYLAND_DISPLAY", "/nonexistent/edgesmith-no-wayland", 0) == 0;
  }
  ~QuietWayland() {
    if (set) unsetenv("WAYLAND_DISPLAY");
  }
};

static WGPUInstance make_instance() {
  QuietWayland quiet;
  WGPUInstanceExtras extras{};
  extras.chain.sType = static_cast<WGPUSType>(WGPUSType_InstanceExtras);
  extras.backends = wanted_backends();
  WGPUInstanceDescriptor desc{};
  desc.nextInChain = &extras.chain;
  WGPUInstance instance = api().wgpuCreateInstance(&desc);
  if (!instance) fail("wgpu-native could not create an instance (" + api().path + ")");
  return instance;
}

static std::vector<WGPUAdapter> enumerate(WGPUInstance instance) {
  WGPUInstanceEnumerateAdapterOptions opts{};
  opts.backends = wanted_backends();
  size_t n = api().wgpuInstanceEnumerateAdapters(instance, &opts, nullptr);
  std::vector<WGPUAdapter> adapters(n);
  if (n) api().wgpuInstanceEnumerateAdapters(instance, &opts, adapters.data());
  return adapters;
}

std::vector<AdapterFacts> list_adapters() {
  if (Context::ready()) {  // the process's own instance
    std::vector<AdapterFacts> out;
    for (WGPUAdapter a : enumerate(Context::get().instance)) out.push_back(read_facts(a)), api().wgpuAdapterRelease(a);
    return out;
  }
  WGPUInstance instance = make_instance();
  std::vector<AdapterFacts> out;
  for (WGPUAdapter a : enumerate(instance)) out.push_back(read_facts(a)), api().wgpuAdapterRelease(a);
  api().wgpuInstanceRelease(instance);
  return out;
}

static const char* kNoAdapterHint =
#if defined(__APPLE__)
    "wgpu-native found no Metal device";
#else
    "wgpu-native found no Vulkan device: install the GPU's Vulkan driver (Mesa: mesa-vulkan-drivers, which also "
    "gives lavapipe on the CPU; NVIDIA: its driver's Vulkan ICD) and the loader libvulkan.so.1";
#endif

// ---------------------------------------------------------------------------- the device

static Context* g_context = nullptr;
static std::mutex g_init_mu;

Context& Context::get() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (!g_context) {
    Context* c = new Context();
    try {
      c->init();
    } catch (...) {
      delete c;
      throw;
    }
    g_context = c;  // kept for the life of the process (the runtime frees buffers until exit)
  }
  return *g_context;
}

bool Context::ready() { return g_context != nullptr; }

static void on_uncaptured(WGPUDevice const*, WGPUErrorType type, WGPUStringView message, void*, void*) {
  std::string& err = uncaptured_error();
  if (err.empty())
    err = std::string(type == WGPUErrorType_OutOfMemory ? "out of device memory: " : "") + str(message);
}

static void on_lost(WGPUDevice const*, WGPUDeviceLostReason reason, WGPUStringView message, void*, void*) {
  if (reason == WGPUDeviceLostReason_Destroyed || reason == WGPUDeviceLostReason_CallbackCancelled) return;
  std::string& err = uncaptured_error();
  if (err.empty()) err = "the device was lost: " + str(message);
}

struct DeviceRequest {
  bool done = false;
  WGPUDevice device = nullptr;
  std::string message;
};

static void on_device_ready(WGPURequestDeviceStatus status, WGPUDevice device, WGPUStringView message, void* user, void*) {
  auto* r = static_cast<DeviceRequest*>(user);
  if (status == WGPURequestDeviceStatus_Success) r->device = device;
  else r->message = str(message);
  r->done = true;
}

void Context::init() {
  const Api& w = api();
  instance = make_instance();
  std::vector<WGPUAdapter> adapters = enumerate(instance);
  std::vector<AdapterFacts> all;
  for (WGPUAdapter a : adapters) all.push_back(read_facts(a));
  const char* env = std::getenv("EDGESMITH_WEBGPU_ADAPTER");
  std::string want = env && *env ? env : "auto";
  int chosen = -1;
  auto first = [&](auto pred) {
    for (size_t i = 0; i < all.size(); ++i)
      if (pred(all[i])) return int(i);
    return -1;
  };
  if (want == "auto") {
    chosen = first([](const AdapterFacts& f) { return f.type == "discrete-gpu"; });
    if (chosen < 0) chosen = first([](const AdapterFacts& f) { return f.type == "integrated-gpu"; });
    if (chosen < 0 && !all.empty()) chosen = 0;
  } else if (want == "gpu") {
    chosen = first([](const AdapterFacts& f) { return f.type == "discrete-gpu" || f.type == "integrated-gpu"; });
  } else if (want == "cpu") {
    chosen = first([](const AdapterFacts& f) { return f.type == "cpu"; });
  } else {
    char* end = nullptr;
    long i = std::strtol(want.c_str(), &end, 10);
    if (!end || *end || i < 0)
      fail("EDGESMITH_WEBGPU_ADAPTER='" + want + "': use auto, gpu, cpu or an adapter number");
    if (size_t(i) < all.size()) chosen = int(i);
  }
  if (chosen < 0) {
    std::string found;
    for (size_t i = 0; i < all.size(); ++i)
      found += (i ? ", " : "") + std::to_string(i) + ": " + all[i].name + " (" + all[i].type + ")";
    for (WGPUAdapter a : adapters) w.wgpuAdapterRelease(a);
    if (all.empty()) fail(std::string("no WebGPU adapter: ") + kNoAdapterHint);
    fail("no WebGPU adapter matches EDGESMITH_WEBGPU_ADAPTER='" + want + "' (found " + found + ")");
  }
  adapter = adapters[chosen];
  for (size_t i = 0; i < adapters.size(); ++i)
    if (int(i) != chosen) w.wgpuAdapterRelease(adapters[i]);
  facts = all[chosen];

  // The adapter's best limits (WebGPU's defaults are far lower: 128 MiB bindings, 256 threads)
  // and the features the kernels may use. EDGESMITH_WEBGPU_F16=off leaves float16 out, for a driver
  // that claims shader-f16 and computes it wrong (q4f16 bundles then refuse to load).
  const char* f16_env = std::getenv("EDGESMITH_WEBGPU_F16");
  if (f16_env && std::string(f16_env) == "off") facts.f16 = false;
  std::vector<WGPUFeatureName> features;
  if (facts.f16) features.push_back(WGPUFeatureName_ShaderF16);
  if (facts.timestamps) features.push_back(WGPUFeatureName_TimestampQuery);
  WGPULimits required = facts.limits;
  required.nextInChain = nullptr;
  WGPUDeviceDescriptor desc{};
  desc.requiredFeatureCount = features.size();
  desc.requiredFeatures = features.data();
  desc.requiredLimits = &required;
  desc.uncapturedErrorCallbackInfo.callback = on_uncaptured;
  desc.deviceLostCallbackInfo.mode = WGPUCallbackMode_AllowSpontaneous;
  desc.deviceLostCallbackInfo.callback = on_lost;
  DeviceRequest request;
  WGPURequestDeviceCallbackInfo cb{};
  cb.mode = WGPUCallbackMode_AllowSpontaneous;
  cb.callback = on_device_ready;
  cb.userdata1 = &request;
  w.wgpuAdapterRequestDevice(adapter, &desc, cb);
  for (int i = 0; !request.done && i < 100000; ++i) w.wgpuInstanceProcessEvents(instance);
  if (!request.device)
    fail("WebGPU adapter '" + facts.name + "' gave no device: " + (request.message.empty() ? "no answer" : request.message));
  device = request.device;
  queue = w.wgpuDeviceGetQueue(device);
  w.wgpuDeviceGetLimits(device, &limits);
  slot_ = std::max<size_t>(256, limits.minUniformBufferOffsetAlignment);
  arena_capacity_ = 1024 * slot_;
  WGPUBufferDescriptor bd{};
  bd.usage = WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst;
  bd.size = arena_capacity_;
  arena_ = w.wgpuDeviceCreateBuffer(device, &bd);
  if (!arena_) fail("could not create the uniform arena on '" + facts.name + "'");
}

// ---------------------------------------------------------------------------- waiting, errors

void Context::wait_for(const bool* done) {
  const Api& w = api();
  for (long i = 0; !*done; ++i) {
    w.wgpuInstanceProcessEvents(instance);
    if (*done) break;
    w.wgpuDevicePoll(device, true, nullptr);
    if (i > 1000000) fail("the device never answered (wgpuDevicePoll)");
  }
}

struct ScopeResult {
  bool done = false;
  WGPUErrorType type = WGPUErrorType_NoError;
  std::string message;
};

static void on_scope(WGPUPopErrorScopeStatus status, WGPUErrorType type, WGPUStringView message, void* user, void*) {
  auto* r = static_cast<ScopeResult*>(user);
  r->type = status == WGPUPopErrorScopeStatus_Success ? type : WGPUErrorType_NoError;
  r->message = str(message);
  r->done = true;
}

void Context::push_scopes() {
  api().wgpuDevicePushErrorScope(device, WGPUErrorFilter_Validation);
  api().wgpuDevicePushErrorScope(device, WGPUErrorFilter_OutOfMemory);
}

void Context::pop_scopes(const std::string& what) {
  ScopeResult results[2];
  for (ScopeResult& r : results) {
    WGPUPopErrorScopeCallbackInfo cb{};
    cb.mode = WGPUCallbackMode_AllowSpontaneous;
    cb.callback = on_scope;
    cb.userdata1 = &r;
    api().wgpuDevicePopErrorScope(device, cb);
    wait_for(&r.done);
  }
  for (const ScopeResult& r : results) {
    if (r.type == WGPUErrorType_NoError) continue;
    std::string msg = r.message;
    for (char& c : msg)
      if (c == '\n' || c == '\r') c = ' ';
    if (r.type == WGPUErrorType_OutOfMemory)
      fail("out of device memory on '" + facts.name + "': " + what + " (" + mib(allocated_) + " in use): " + msg);
    fail(what + " failed on '" + facts.name + "': " + msg);
  }
}

void Context::check_uncaptured() {
  std::string& err = uncaptured_error();
  if (err.empty()) return;
  std::string msg = err;
  err.clear();
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  fail("the device '" + facts.name + "' reported: " + msg);
}

// ---------------------------------------------------------------------------- memory

WGPUBuffer Context::alloc(size_t nbytes) {
  Lock lock(mu_);
  size_t size = std::max<size_t>(4, (nbytes + 3) / 4 * 4);
  if (size > limits.maxBufferSize)
    fail("out of device memory on '" + facts.name + "': one buffer of " + mib(size) + " is more than the device's "
         "maxBufferSize (" + mib(limits.maxBufferSize) + ")");
  WGPUBufferDescriptor bd{};
  bd.usage = WGPUBufferUsage_Storage | WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst;
  bd.size = size;
  WGPUBuffer buffer = scoped("allocating " + mib(size), [&] { return api().wgpuDeviceCreateBuffer(device, &bd); });
  if (!buffer) fail("out of device memory on '" + facts.name + "': allocating " + mib(size) + " on top of " + mib(allocated_));
  sizes_[buffer] = size;
  allocated_ += size;
  return buffer;
}

void Context::release(WGPUBuffer buffer) {
  Lock lock(mu_);
  auto it = sizes_.find(buffer);
  if (it == sizes_.end()) return;
  // A pending dispatch may still read it: the batch goes first (wgpu keeps a submitted buffer
  // alive until its work is done).
  flush();
  allocated_ -= it->second;
  sizes_.erase(it);
  api().wgpuBufferDestroy(buffer);
  api().wgpuBufferRelease(buffer);
}

size_t Context::size_of(WGPUBuffer buffer) const {
  Lock lock(mu_);
  auto it = sizes_.find(buffer);
  if (it == sizes_.end()) fail("a kernel argument or copy names a buffer this WebGPU runtime did not allocate");
  return it->second;
}

}  // namespace wgpu
}  // namespace edgesmith
