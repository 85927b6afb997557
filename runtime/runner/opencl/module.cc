// module.cc — the OpenCL device module of a model library ("ffi.Module.load_from_bytes.opencl").
//
// A library exported for an OpenCL target carries its kernels as bytes (TVM 0.27's
// OpenCLModuleNode::SaveToBytes); loading it asks for this loader. The bytes, all integers
// little-endian, strings and arrays length-prefixed with a u64:
//
//   str fmt                                   "cl": OpenCL C source (the only format TVM emits here)
//   u64 n, then n times:                      the function table
//     str key                                 kernel name
//     str name                                (the same)
//     u64 k, k x {u8 code, u8 bits, u16 lanes}  argument types: handles (buffers), int32/64, float32...
//     u64 t, t x str                          launch tags, one per launch argument after the kernel's
//                                             own: "blockIdx.x".."threadIdx.z" (grid and group sizes);
//                                             flags such as "tirx.use_dyn_shared_memory" take none
//     u64 e, e x i32                          argument extra tags (CUDA tensor maps; 0 here)
//   str code                                  all kernels; each starts after a "// Function: NAME" line
//
// A call: (kernel args..., launch args...). The kernel is enqueued with local size = the
// threadIdx extents and global size = blockIdx x threadIdx per dimension; work_dim is the
// highest dimension either names. Each kernel's source is its own program, built on its first
// call (programs.h: from the binary cache when it can).

#include <tvm/ffi/cast.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../plugin_counts.h"
#include "context.h"
#include "programs.h"

namespace edgesmith {
namespace ocl {

namespace ffi = tvm::ffi;

// ---------------------------------------------------------------------------- parsing the bytes

namespace {

// What the runner counts (../plugin_counts.h): note_launch and note_host_wait of context.h.
PluginCounts g_counts;

enum class ArgKind { kBuffer, kInt32, kUInt32, kInt64, kFloat32, kFloat64 };

struct KernelInfo {
  std::string name;
  std::vector<ArgKind> args;
  std::vector<int> launch_dims;  // per launch argument: 0-2 blockIdx.xyz, 3-5 threadIdx.xyz
  cl_uint work_dim = 1;
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
      fail("the model library's OpenCL module is cut short (needs " + std::to_string(len) + " bytes at byte " +
           std::to_string(pos_) + " of " + std::to_string(n_) + "); recompile the bundle with TVM 0.27");
  }
  const char* p_;
  size_t n_, pos_ = 0;
};

ArgKind arg_kind(const std::string& kernel, uint8_t code, uint8_t bits, uint16_t lanes) {
  if (lanes == 1) {
    if (code == kDLOpaqueHandle) return ArgKind::kBuffer;
    if (code == kDLInt && bits == 32) return ArgKind::kInt32;
    if (code == kDLInt && bits == 64) return ArgKind::kInt64;
    if (code == kDLUInt && bits == 32) return ArgKind::kUInt32;
    if (code == kDLFloat && bits == 32) return ArgKind::kFloat32;
    if (code == kDLFloat && bits == 64) return ArgKind::kFloat64;
  }
  fail("kernel '" + kernel + "' takes an argument of type code " + std::to_string(code) + ", " +
       std::to_string(bits) + " bits x " + std::to_string(lanes) + ", which TVM never passes to an OpenCL kernel; "
       "recompile the bundle");
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
  uint64_t n_tags = r.u64();
  for (uint64_t i = 0; i < n_tags; ++i) {
    std::string tag = r.str();
    int dim = -1;
    char axis = tag.empty() ? 0 : tag.back();
    bool xyz = axis >= 'x' && axis <= 'z';
    if (xyz && tag.size() == 10 && tag.compare(0, 9, "blockIdx.") == 0) dim = axis - 'x';
    else if (xyz && tag.size() == 11 && tag.compare(0, 10, "threadIdx.") == 0) dim = 3 + axis - 'x';
    else if (tag == "tirx.use_dyn_shared_memory")
      fail("kernel '" + k.name + "' asks for dynamic local memory, which TVM's OpenCL code never uses; "
           "recompile the bundle");
    else if (tag.rfind("tirx.", 0) == 0) continue;  // CUDA launch flags: no argument, nothing to do here
    if (dim < 0) fail("kernel '" + k.name + "' has launch tag '" + tag + "', unknown to OpenCL");
    k.launch_dims.push_back(dim);
    k.work_dim = std::max<cl_uint>(k.work_dim, dim % 3 + 1);
  }
  uint64_t n_extra = r.u64();
  for (uint64_t i = 0; i < n_extra; ++i)
    if (r.take<int32_t>() != 0) fail("kernel '" + k.name + "' has a CUDA tensor-map argument; not an OpenCL kernel");
  return k;
}

// "// Function: NAME\n<source>" blocks -> {NAME: source}
std::map<std::string, std::string> split_kernels(const std::string& code) {
  static const std::string mark = "// Function: ";
  std::map<std::string, std::string> out;
  size_t at = code.find(mark);
  while (at != std::string::npos) {
    size_t name_end = code.find('\n', at);
    if (name_end == std::string::npos) break;
    std::string name = code.substr(at + mark.size(), name_end - at - mark.size());
    size_t next = code.find(mark, name_end);
    out[name] = code.substr(name_end + 1, next == std::string::npos ? std::string::npos : next - name_end - 1);
    at = next;
  }
  return out;
}

// ---------------------------------------------------------------------------- one kernel

class Kernel {
 public:
  Kernel(KernelInfo info, std::string source) : info_(std::move(info)), source_(std::move(source)) {}
  ~Kernel() {
    if (kernel_) api().clReleaseKernel(kernel_);
    if (program_) api().clReleaseProgram(program_);
  }

  void launch(ffi::PackedArgs args) {
    size_t n_args = info_.args.size();
    if (static_cast<size_t>(args.size()) != n_args + info_.launch_dims.size())
      fail("kernel '" + info_.name + "' called with " + std::to_string(args.size()) + " arguments, expects " +
           std::to_string(n_args + info_.launch_dims.size()) + "; the model library does not match its kernels");
    Context& ctx = Context::get();
    const Api& cl = api();
    std::lock_guard<std::mutex> lock(mu_);  // clSetKernelArg + enqueue: one caller at a time
    if (!kernel_) build(ctx);
    for (size_t i = 0; i < n_args; ++i) {
      cl_int err = CL_SUCCESS;
      switch (info_.args[i]) {
        case ArgKind::kBuffer: {
          cl_mem mem = static_cast<cl_mem>(args[i].cast<void*>());
          err = cl.clSetKernelArg(kernel_, i, sizeof(cl_mem), &mem);
          break;
        }
        case ArgKind::kInt32: { int32_t v = static_cast<int32_t>(args[i].cast<int64_t>()); err = cl.clSetKernelArg(kernel_, i, 4, &v); break; }
        case ArgKind::kUInt32: { uint32_t v = static_cast<uint32_t>(args[i].cast<int64_t>()); err = cl.clSetKernelArg(kernel_, i, 4, &v); break; }
        case ArgKind::kInt64: { int64_t v = args[i].cast<int64_t>(); err = cl.clSetKernelArg(kernel_, i, 8, &v); break; }
        case ArgKind::kFloat32: { float v = static_cast<float>(args[i].cast<double>()); err = cl.clSetKernelArg(kernel_, i, 4, &v); break; }
        case ArgKind::kFloat64: { double v = args[i].cast<double>(); err = cl.clSetKernelArg(kernel_, i, 8, &v); break; }
      }
      ctx.check(err, "setting argument " + std::to_string(i) + " of kernel '" + info_.name + "'");
    }
    size_t size[6] = {1, 1, 1, 1, 1, 1};  // grid xyz (work-groups), group xyz (work-items)
    for (size_t j = 0; j < info_.launch_dims.size(); ++j) {
      int64_t v = args[n_args + j].cast<int64_t>();
      if (v > 0) size[info_.launch_dims[j]] = static_cast<size_t>(v);  // a dynamic 0 still launches 1
    }
    size_t global[3], local[3];
    for (int d = 0; d < 3; ++d) local[d] = size[3 + d], global[d] = size[d] * size[3 + d];
    cl_int err = cl.clEnqueueNDRangeKernel(ctx.queue, kernel_, info_.work_dim, nullptr, global, local, 0, nullptr, nullptr);
    if (err == CL_INVALID_WORK_GROUP_SIZE || err == CL_INVALID_WORK_ITEM_SIZE) {
      size_t kernel_max = 0;
      cl.clGetKernelWorkGroupInfo(kernel_, ctx.device, CL_KERNEL_WORK_GROUP_SIZE, sizeof(kernel_max), &kernel_max, nullptr);
      fail("kernel '" + info_.name + "' needs work-groups of " + std::to_string(local[0]) + "x" + std::to_string(local[1]) +
           "x" + std::to_string(local[2]) + " and '" + ctx.facts.name + "' allows " + std::to_string(kernel_max) +
           " work-items for it (device maximum " + std::to_string(ctx.facts.max_work_group) + "): compile the bundle "
           "for a preset whose max_threads_per_block fits this device");
    }
    ctx.check(err, "launching kernel '" + info_.name + "'");
    note_launch();
  }

 private:
  void build(Context& ctx) {
    program_ = build_program(ctx, info_.name, source_);
    cl_int err = CL_SUCCESS;
    kernel_ = api().clCreateKernel(program_, info_.name.c_str(), &err);
    ctx.check(err, "creating kernel '" + info_.name + "' from its program");
  }

  KernelInfo info_;
  std::string source_;
  std::mutex mu_;
  cl_program program_ = nullptr;
  cl_kernel kernel_ = nullptr;
};

// ---------------------------------------------------------------------------- the module

class OpenCLModule final : public ffi::ModuleObj {
 public:
  explicit OpenCLModule(const ffi::Bytes& bytes) : bytes_(bytes) {
    Reader r(bytes);
    std::string fmt = r.str();
    if (fmt != "cl")
      fail("the model library's OpenCL module is in format '" + fmt + "'; edgesmith's OpenCL runtime runs OpenCL C "
           "source ('cl') only: recompile the bundle for an OpenCL preset");
    std::vector<KernelInfo> infos;
    uint64_t n = r.u64();
    for (uint64_t i = 0; i < n; ++i) infos.push_back(read_function_info(r));
    code_ = r.str();
    if (!r.done()) fail("the model library's OpenCL module has trailing bytes; recompile the bundle with TVM 0.27");
    std::map<std::string, std::string> sources = split_kernels(code_);
    for (auto& info : infos) {
      auto it = sources.find(info.name);
      if (it == sources.end()) fail("kernel '" + info.name + "' has no source in the model library; recompile the bundle");
      std::string name = info.name;
      kernels_[name] = std::make_shared<Kernel>(std::move(info), it->second);
    }
    // The device now, while the library loads: no OpenCL, no platform or no device is one clear
    // error here rather than a failure inside the VM's first allocation.
    Context::get();
  }

  const char* kind() const final { return "opencl"; }
  int GetPropertyMask() const final { return ffi::Module::kBinarySerializable | ffi::Module::kRunnable; }
  ffi::Bytes SaveToBytes() const final { return bytes_; }
  ffi::String InspectSource(const ffi::String&) const final { return code_; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    std::shared_ptr<Kernel> kernel = it->second;
    ffi::Module self = ffi::GetRef<ffi::Module>(this);  // the function keeps its module alive
    return ffi::Function::FromPacked([kernel, self](ffi::PackedArgs args, ffi::Any*) { kernel->launch(args); });
  }

 private:
  ffi::Bytes bytes_;
  std::string code_;
  std::map<std::string, std::shared_ptr<Kernel>> kernels_;
};

struct Register {
  Register() {
    ffi::Function::SetGlobal(
        "ffi.Module.load_from_bytes.opencl",
        ffi::Function::FromTyped([](ffi::Bytes bytes) { return ffi::Module(ffi::make_object<OpenCLModule>(bytes)); }),
        true);
    g_counts.register_as("opencl");
  }
} register_module_loader;

}  // namespace

void note_launch() { g_counts.launch(); }
void note_host_wait() { g_counts.host_wait(); }
}  // namespace ocl
}  // namespace edgesmith
