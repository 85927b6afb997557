// module.cc — the WebGPU device module of a model library ("ffi.Module.load_from_bytes.webgpu").
//
// A library exported for TVM's webgpu target carries its kernels as bytes (TVM 0.27's
// WebGPUFallbackModuleNode::SaveToBytes, which web/emcc/webgpu_runtime.cc reads in the browser).
// All integers little-endian, strings length-prefixed with a u64:
//
//   u64 n, then n times:                      the function table (FunctionInfo)
//     str key, str name                       kernel name (twice)
//     u64 k, k x {u8 code, u8 bits, u16 lanes}  argument types: handles (storage buffers), then
//                                             int32/uint32/float32 scalars (WGSL has no 64-bit ints)
//     u64 t, t x str                          launch tags: "blockIdx.x/y", "threadIdx.x/y/z", one per
//                                             launch argument, and "paramWriteAccess:[0,1,...]"
//                                             (per buffer: read-only or read-write), which takes none
//     u64 e, e x i32                          argument extra tags (0 here)
//   u64 m, then m times: str name, str wgsl   one complete WGSL shader per kernel
//
// The shader's bindings (TVM's CodeGenWebGPU; web/src/webgpu.ts binds them the same way): group 0,
// binding i = the i-th buffer argument (storage, read or read_write); binding b (after the
// buffers) = a uniform struct of the scalar arguments in order, each 4 bytes (i32/u32/f32), then
// `packGridDimX: u32`. blockIdx.x is computed as blockIdx.z * gridDim.x + blockIdx.x so grids
// past the 65535 workgroups a dimension allows are spread over z; a workgroup whose index is past
// packGridDimX returns at once. (The kernels test `index > packGridDimX`, so the runtime passes
// the last valid index, blocks - 1; webgpu.ts passes the count, which lets one padded workgroup
// through when it spreads an odd count.)
//
// A call: (kernel args..., launch args...). Each kernel's shader module and pipeline are built on
// its first call, and its dispatches batched (context.h).

#include <tvm/ffi/cast.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../plugin_counts.h"
#include "context.h"
#include "pipelines.h"

namespace edgesmith {
namespace wgpu {

namespace ffi = tvm::ffi;

PipelineStats& pipeline_stats() {
  static PipelineStats stats;
  return stats;
}

std::string PipelineStats::json() const {
  char buf[96];
  snprintf(buf, sizeof(buf), "{\"built\": %lld, \"build_s\": %.3f}", static_cast<long long>(built), seconds);
  return buf;
}

namespace {

// What the runner counts (../plugin_counts.h): note_launch and note_host_wait of context.h.
PluginCounts g_counts;

enum class ArgKind { kBuffer, kInt32, kUInt32, kFloat32 };

struct KernelInfo {
  std::string name;
  std::vector<ArgKind> args;
  std::vector<int> launch_dims;  // per launch argument: 0-2 blockIdx.xyz, 3-5 threadIdx.xyz
  std::vector<int> write_access;  // per buffer argument: 1 read_write, 0 read
};

class Reader {
 public:
  explicit Reader(const ffi::Bytes& b) : p_(b.data()), n_(b.size()) {}
  uint64_t u64() { return take<uint64_t>(); }
  std::string str() {
    uint64_t len = u64();
    need(len);
    std::string s(p_ + pos_, len);
    pos_ += len;
    return s;
  }
  template <typename T>
  T take() {
    need(sizeof(T));
    T v;
    memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  bool done() const { return pos_ == n_; }

 private:
  void need(uint64_t len) {
    if (len > n_ - pos_)
      fail("the model library's WebGPU module is cut short (needs " + std::to_string(len) + " bytes at byte " +
           std::to_string(pos_) + " of " + std::to_string(n_) + "); recompile the bundle with TVM 0.27");
  }
  const char* p_;
  size_t n_, pos_ = 0;
};

ArgKind arg_kind(const std::string& kernel, uint8_t code, uint8_t bits, uint16_t lanes) {
  if (lanes == 1) {
    if (code == kDLOpaqueHandle) return ArgKind::kBuffer;
    if (code == kDLInt && bits == 32) return ArgKind::kInt32;
    if (code == kDLUInt && bits == 32) return ArgKind::kUInt32;
    if (code == kDLFloat && bits == 32) return ArgKind::kFloat32;
  }
  fail("kernel '" + kernel + "' takes an argument of type code " + std::to_string(code) + ", " +
       std::to_string(bits) + " bits x " + std::to_string(lanes) + ", which a WebGPU kernel cannot take (int32, "
       "uint32, float32 and buffers only); recompile the bundle");
}

std::vector<int> parse_access(const std::string& kernel, const std::string& list) {
  std::vector<int> out;  // "[0,1,1]"
  if (list.size() < 2 || list.front() != '[' || list.back() != ']')
    fail("kernel '" + kernel + "' has a malformed paramWriteAccess tag '" + list + "'; recompile the bundle");
  for (size_t i = 1; i + 1 < list.size(); ++i)
    if (list[i] == '0' || list[i] == '1') out.push_back(list[i] - '0');
  return out;
}

KernelInfo read_function_info(Reader& r) {
  KernelInfo k;
  r.str();  // the map's key: the same name
  k.name = r.str();
  uint64_t n_args = r.u64();
  for (uint64_t i = 0; i < n_args; ++i) {
    uint8_t code = r.take<uint8_t>(), bits = r.take<uint8_t>();
    uint16_t lanes = r.take<uint16_t>();
    k.args.push_back(arg_kind(k.name, code, bits, lanes));
  }
  bool have_access = false;
  uint64_t n_tags = r.u64();
  for (uint64_t i = 0; i < n_tags; ++i) {
    std::string tag = r.str();
    static const std::string access = "paramWriteAccess:";
    if (tag.compare(0, access.size(), access) == 0) {
      k.write_access = parse_access(k.name, tag.substr(access.size()));
      have_access = true;
      continue;
    }
    int dim = -1;
    char axis = tag.empty() ? 0 : tag.back();
    bool xyz = axis >= 'x' && axis <= 'z';
    if (xyz && tag.size() == 10 && tag.compare(0, 9, "blockIdx.") == 0) dim = axis - 'x';
    else if (xyz && tag.size() == 11 && tag.compare(0, 10, "threadIdx.") == 0) dim = 3 + axis - 'x';
    if (dim < 0) fail("kernel '" + k.name + "' has launch tag '" + tag + "', unknown to WebGPU");
    if (dim == 2) fail("kernel '" + k.name + "' launches over blockIdx.z, which TVM's WebGPU code reserves; recompile");
    k.launch_dims.push_back(dim);
  }
  uint64_t n_extra = r.u64();
  for (uint64_t i = 0; i < n_extra; ++i)
    if (r.take<int32_t>() != 0) fail("kernel '" + k.name + "' has a CUDA tensor-map argument; not a WebGPU kernel");
  size_t n_buffers = 0;
  for (ArgKind a : k.args) n_buffers += a == ArgKind::kBuffer;
  if (!have_access || k.write_access.size() != n_buffers)
    fail("kernel '" + k.name + "' does not say which of its " + std::to_string(n_buffers) + " buffers it writes "
         "(paramWriteAccess); recompile the bundle with TVM 0.27");
  return k;
}

// ---------------------------------------------------------------------------- one kernel

class Kernel {
 public:
  Kernel(KernelInfo info, std::string source) : info_(std::move(info)), source_(std::move(source)) {}
  ~Kernel() {  // only at exit: the module lives as long as the model
    if (!Context::ready()) return;
    const Api& w = api();
    if (pipeline_) w.wgpuComputePipelineRelease(pipeline_);
    if (layout_) w.wgpuBindGroupLayoutRelease(layout_);
  }

  void launch(ffi::PackedArgs args) {
    size_t n_args = info_.args.size();
    if (static_cast<size_t>(args.size()) != n_args + info_.launch_dims.size())
      fail("kernel '" + info_.name + "' called with " + std::to_string(args.size()) + " arguments, expects " +
           std::to_string(n_args + info_.launch_dims.size()) + "; the model library does not match its kernels");
    Context& ctx = Context::get();
    std::lock_guard<std::mutex> lock(mu_);
    if (!pipeline_) build(ctx);
    std::vector<WGPUBuffer> buffers;
    std::vector<uint32_t> pod;
    for (size_t i = 0; i < n_args; ++i) {
      switch (info_.args[i]) {
        case ArgKind::kBuffer: buffers.push_back(static_cast<WGPUBuffer>(args[i].cast<void*>())); break;
        case ArgKind::kInt32: pod.push_back(static_cast<uint32_t>(static_cast<int32_t>(args[i].cast<int64_t>()))); break;
        case ArgKind::kUInt32: pod.push_back(static_cast<uint32_t>(args[i].cast<int64_t>())); break;
        case ArgKind::kFloat32: {
          float f = static_cast<float>(args[i].cast<double>());
          uint32_t bits;
          memcpy(&bits, &f, 4);
          pod.push_back(bits);
          break;
        }
      }
    }
    int64_t size[6] = {1, 1, 1, 1, 1, 1};  // grid xyz (workgroups), group xyz (fixed in the shader)
    for (size_t j = 0; j < info_.launch_dims.size(); ++j) size[info_.launch_dims[j]] = args[n_args + j].cast<int64_t>();
    if (size[0] <= 0 || size[1] <= 0) return;  // an empty grid: nothing to compute
    // Spread a long x over z (TVM's kernels recombine them; webgpu.ts does the same).
    const int64_t max_dim = ctx.limits.maxComputeWorkgroupsPerDimension;
    int64_t x = size[0], z = 1;
    while (x > max_dim) x = (x + 1) / 2, z *= 2;
    if (size[1] > max_dim || z > max_dim)
      fail("kernel '" + info_.name + "' needs a grid of " + std::to_string(size[0]) + " x " + std::to_string(size[1]) +
           " workgroups and '" + ctx.facts.name + "' allows " + std::to_string(max_dim) + " per dimension");
    pod.push_back(static_cast<uint32_t>(size[0] - 1));  // packGridDimX: the last workgroup index that computes
    uint32_t grid[3] = {uint32_t(x), uint32_t(size[1]), uint32_t(z)};
    ctx.dispatch(info_.name, pipeline_, layout_, buffers, pod, grid);
    note_launch();
  }

  const std::string& name() const { return info_.name; }

 private:
  void build(Context& ctx) {
    auto t0 = std::chrono::steady_clock::now();
    const Api& w = api();
    WGPUShaderSourceWGSL wgsl{};
    wgsl.chain.sType = WGPUSType_ShaderSourceWGSL;
    wgsl.code = sv(source_);
    WGPUShaderModuleDescriptor md{};
    md.nextInChain = &wgsl.chain;
    md.label = sv(info_.name);
    WGPUShaderModule shader = ctx.scoped("compiling kernel '" + info_.name + "' (WGSL)",
                                         [&] { return w.wgpuDeviceCreateShaderModule(ctx.device, &md); });

    std::vector<WGPUBindGroupLayoutEntry> entries;
    for (size_t i = 0; i < info_.write_access.size(); ++i) {
      WGPUBindGroupLayoutEntry e{};
      e.binding = uint32_t(i);
      e.visibility = WGPUShaderStage_Compute;
      e.buffer.type = info_.write_access[i] ? WGPUBufferBindingType_Storage : WGPUBufferBindingType_ReadOnlyStorage;
      entries.push_back(e);
    }
    WGPUBindGroupLayoutEntry u{};
    u.binding = uint32_t(info_.write_access.size());
    u.visibility = WGPUShaderStage_Compute;
    u.buffer.type = WGPUBufferBindingType_Uniform;
    entries.push_back(u);
    WGPUBindGroupLayoutDescriptor ld{};
    ld.entryCount = entries.size();
    ld.entries = entries.data();
    layout_ = ctx.scoped("the bindings of kernel '" + info_.name + "'",
                         [&] { return w.wgpuDeviceCreateBindGroupLayout(ctx.device, &ld); });
    WGPUPipelineLayoutDescriptor pd{};
    pd.bindGroupLayoutCount = 1;
    pd.bindGroupLayouts = &layout_;
    WGPUPipelineLayout pipeline_layout = w.wgpuDeviceCreatePipelineLayout(ctx.device, &pd);
    WGPUComputePipelineDescriptor cd{};
    cd.layout = pipeline_layout;
    cd.compute.module = shader;
    cd.compute.entryPoint = sv(info_.name);
    pipeline_ = ctx.scoped("building the pipeline of kernel '" + info_.name + "'",
                           [&] { return w.wgpuDeviceCreateComputePipeline(ctx.device, &cd); });
    w.wgpuPipelineLayoutRelease(pipeline_layout);
    w.wgpuShaderModuleRelease(shader);
    PipelineStats& stats = pipeline_stats();
    stats.built += 1;
    stats.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  KernelInfo info_;
  std::string source_;
  std::mutex mu_;
  WGPUBindGroupLayout layout_ = nullptr;
  WGPUComputePipeline pipeline_ = nullptr;
};

// ---------------------------------------------------------------------------- the module

class WebGPUModule final : public ffi::ModuleObj {
 public:
  explicit WebGPUModule(const ffi::Bytes& bytes) : bytes_(bytes) {
    Reader r(bytes);
    std::vector<KernelInfo> infos;
    uint64_t n = r.u64();
    for (uint64_t i = 0; i < n; ++i) infos.push_back(read_function_info(r));
    std::map<std::string, std::string> shaders;
    uint64_t m = r.u64();
    for (uint64_t i = 0; i < m; ++i) {
      std::string name = r.str();
      shaders[name] = r.str();
    }
    if (!r.done()) fail("the model library's WebGPU module has trailing bytes; recompile the bundle with TVM 0.27");
    // The device now, while the library loads: no library, no adapter, or no float16 where the
    // kernels need it is one clear error here rather than inside the VM's first call.
    Context& ctx = Context::get();
    for (auto& info : infos) {
      auto it = shaders.find(info.name);
      if (it == shaders.end()) fail("kernel '" + info.name + "' has no WGSL in the model library; recompile the bundle");
      if (!ctx.facts.f16 && it->second.find("enable f16;") != std::string::npos)
        fail("the bundle's kernels compute in float16 (kernel '" + info.name + "') and WebGPU adapter '" +
             ctx.facts.name + "' has no shader-f16: compile the bundle with --quant q4f32");
      source_ += it->second;
      std::string name = info.name;
      kernels_[name] = std::make_shared<Kernel>(std::move(info), it->second);
    }
  }

  const char* kind() const final { return "webgpu"; }
  int GetPropertyMask() const final { return ffi::Module::kBinarySerializable | ffi::Module::kRunnable; }
  ffi::Bytes SaveToBytes() const final { return bytes_; }
  ffi::String InspectSource(const ffi::String&) const final { return source_; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    std::shared_ptr<Kernel> kernel = it->second;
    ffi::Module self = ffi::GetRef<ffi::Module>(this);  // the function keeps its module alive
    return ffi::Function::FromPacked([kernel, self](ffi::PackedArgs args, ffi::Any*) { kernel->launch(args); });
  }

 private:
  ffi::Bytes bytes_;
  std::string source_;
  std::map<std::string, std::shared_ptr<Kernel>> kernels_;
};

struct Register {
  Register() {
    ffi::Function::SetGlobal(
        "ffi.Module.load_from_bytes.webgpu",
        ffi::Function::FromTyped([](ffi::Bytes bytes) { return ffi::Module(ffi::make_object<WebGPUModule>(bytes)); }),
        true);
    g_counts.register_as("webgpu");
  }
} register_module_loader;

}  // namespace

void note_launch() { g_counts.launch(); }
void note_host_wait() { g_counts.host_wait(); }
}  // namespace wgpu
}  // namespace edgesmith
